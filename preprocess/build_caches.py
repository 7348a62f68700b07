"""Build the anticipatory training caches from MIDI files (the job behind `amt preprocess`).

A draccus entry point over `amt.preprocess.PreprocessConfig`, for config files and cluster launches:

    python preprocess/build_caches.py --source lmd_full.tar.gz --out gs://bucket/lakh-a30 --augment 30 \
        --ray_address auto
    python preprocess/build_caches.py --config_path preprocess/lakh.yaml
"""

import json
import logging

import draccus

from amt.cli import job_errors
from amt.preprocess import ConfigMismatch, PreprocessConfig, run


@draccus.wrap()
def main(config: PreprocessConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with job_errors("build_caches.py", ConfigMismatch):  # a missing source, a bad value: one line, exit status 2
        stats = run(config)
    print(json.dumps(stats["splits"], indent=1))


if __name__ == "__main__":
    main()
