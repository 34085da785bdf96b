// Package browser drives a headless Chromium for tests: the dashboard's
// browser test loads the page from a running Freeway, reads what it shows
// and takes screenshots. It speaks the DevTools protocol over the pipe
// Chromium opens with --remote-debugging-pipe (JSON messages ended by a
// NUL byte on file descriptors 3 and 4), so it needs no websocket, no
// third-party module and no browser download: it runs Debian's
// chromium, which scripts/deps.sh installs.
//
// Only what tests need is here: open a page, navigate, evaluate
// JavaScript, set the viewport, take a screenshot, and collect what the
// page logged and threw. It keeps nothing: each Chrome has a fresh
// profile directory, removed by Close.
package browser
