"""The online loop: `experiment` (rounds of sampling, labeling through the store, reward training
and PPO segments, with kill/resume), `schedule` (how many labels by when), `label_worker`
(programmatic labelers that label through the web app like people) and `hooks` (callbacks for
tests and tools)."""
