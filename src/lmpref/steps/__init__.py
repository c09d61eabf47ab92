"""Steps: each paper stage as a function on files (samples.jsonl in, labels.jsonl out, a saved model
in, a run directory out), so every component runs and debugs alone.

`train` (sample, label, train-reward, sft, train-policy, the offline pipeline), `evaluate` (win
rates, summary metrics, human comparisons through the store), `checkpoint` (the run directory's
checkpoint format), `launch` (every check on how the process was started), `guards` (the automatic
guards that stop a run going wrong), `metrics_log` (metrics.jsonl + TensorBoard)."""
