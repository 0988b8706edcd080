// Interop peer for tests/interop/test_gonmsg.py. go-nmsg is pinned at v0.2.0: newer releases import
// github.com/pebbe/zmq4 (cgo + libzmq), and v0.3.0 (the last without it) is not served by the module
// proxy here. go.sum is committed so builds fetch exactly these versions from the module proxy.
module github.com/example/dnsqr-edns-pipeline/tests/interop/gonmsg

go 1.21

require (
	github.com/farsightsec/go-nmsg v0.2.0
	google.golang.org/protobuf v1.25.0
)
