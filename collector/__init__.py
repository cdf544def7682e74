"""The collector: agents ship event batches over HTTP(S); one writer puts them in the store."""
