"""What a trial leaves behind and what reads it back: the record (`record`), the one registry of metrics
(`metrics`), the append-only store (`store`), statistics across seeds (`stats`) and W&B (`tracking`).

Import from the modules (`stabench.records.metrics`): this file imports nothing, so the CLI can read the metric
registry without loading torch.
"""
