// Package deploy holds no code: it is the home of the tests of the
// deployment files, which cannot run anywhere else. compose_test.go loads
// the root docker-compose.yml and the Dockerfiles under deploy/docker/ and
// checks that they agree with each other and with the freeway binary (see
// deploy/docker/README.md); deploy/engines/ starts the real engines the other
// tests run against.
package deploy
