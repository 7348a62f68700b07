"""The paper's Table 1 for checkpoints on a test cache (the job behind `amt eval perplexity`).

A draccus entry point over `amt.perplexity.PerplexityConfig`:

    python eval/perplexity.py --checkpoints '[runs/amt-small/checkpoints]' --cache gs://bucket/lakh-a30/test
    python eval/perplexity.py --config_path eval/lakh-test.yaml
"""

import logging

import draccus

from amt.cli import job_errors
from amt.perplexity import PerplexityConfig, markdown_table, run


@draccus.wrap()
def main(config: PerplexityConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with job_errors("perplexity.py"):  # a missing checkpoint or cache, a bad value: one line, exit status 2
        results = run(config)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
