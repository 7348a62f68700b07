"""Prompted-generation metrics for a checkpoint on test clips (the job behind `amt eval generation`).

A draccus entry point over `amt.generation_eval.GenerationEvalConfig`:

    python eval/generation.py --checkpoint runs/amt-small/checkpoints --midi lmd_full.tar.gz --clips 100
"""

import logging

import draccus

from amt.cli import job_errors
from amt.generation_eval import GenerationEvalConfig, markdown_report, run


@draccus.wrap()
def main(config: GenerationEvalConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with job_errors("generation.py"):  # a missing checkpoint or MIDI source, a bad value: one line, exit status 2
        report = run(config)
    print(markdown_report(report))


if __name__ == "__main__":
    main()
