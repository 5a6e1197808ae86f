"""The response cache in Portkey's form (`cache: {mode: simple, max_age}`): exact-match keys,
streamed answers replayed as streams, in-process LRU or Redis backends."""
