"""Dataset cleaning before tokenization: repair, markup stripping, quality filters and
deduplication in one streaming pass (see `pipeline.clean_file`)."""
