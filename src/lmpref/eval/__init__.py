"""Evaluation without a model: programmatic labelers (`labelers`), win rates and their intervals
(`winrate`), ROUGE / lead-3 / novelty (`metrics`), the copying rule (`copying`), the HTML report
(`report`) and its SVG plots (`plots`). Nothing here samples; `lmpref.steps.evaluate` does."""
