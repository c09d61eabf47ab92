"""The core: the paper's machinery on tensors, with no files, database or command line.

`loading` (model ids and paths, the bundled SmolLM2 and tiny GPT-2), `models` (the policy with its
value head, and the layer helpers both heads use), `reward` (the reward model, its best-of-K loss,
normalisation and training), `sampling` and `trunk` (decoding; the shared frozen trunk), `responses`
(the truncation rule and the penalty for responses that break it), `ppo`, `sft`, `accel` (accelerate
glue), `runtime` (device, threads, seeds). Imports only `lmpref.config`, `lmpref.io`,
`lmpref.records` and `lmpref.text` from the project."""
