"""The benchmarks (`pynas bench`): the fused ops against their eager forms (:mod:`.ops`), whole search
steps (:mod:`.search`) and the memory of a search step (:mod:`.memory`, also ``pynas search --max-memory``)."""
