"""Lead-3 ROUGE on CNN/DM articles: a check of our ROUGE and sentence splitting against the
published lead-3 baseline (See et al. 2017, Table 1: R-1 40.34, R-2 17.70, R-L 36.57, full test set).

    python bench/lead3_rouge.py [--data FILE.jsonl] [--splitter regex|punkt]

Default data: the 250 shipped CNN/DM test articles (FRANK). Prints F1 x 100.
"""

import argparse
import time

from lmpref.eval.metrics import lead3_summaries, mean_rouge
from lmpref.tasks.summarization import load_cnndm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="JSONL of {id, article, reference}")
    parser.add_argument("--splitter", default="regex", choices=["regex", "punkt"])
    args = parser.parse_args()

    examples = load_cnndm(args.data)
    t0 = time.perf_counter()
    summaries = lead3_summaries([e.document for e in examples], args.splitter)
    scores = mean_rouge(summaries, [e.reference for e in examples], args.splitter)
    print(f"lead-3 on {len(examples)} articles ({args.splitter} splitter, {time.perf_counter() - t0:.1f}s)")
    for name, value in scores.items():
        print(f"  {name:10s} {value:6.2f}")
    print("  published (See et al. 2017, full test set): rouge1 40.34, rouge2 17.70, rougeL(sum) 36.57")


if __name__ == "__main__":
    main()
