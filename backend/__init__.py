"""The HTTP server that Label Studio connects to as an ML backend."""
