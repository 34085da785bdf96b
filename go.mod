module github.com/freeway-dev/freeway

go 1.26.8

require (
	github.com/apache/thrift v0.25.0
	go.etcd.io/bbolt v1.5.0
)

require golang.org/x/sys v0.45.0 // indirect
