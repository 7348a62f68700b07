"""One training step on a simulated 8-device CPU mesh (data 4 x model 2); prints each parameter's sharding.

Run as a subprocess by test_train.py (the device count must be set before jax starts):
    python tests/mesh_step.py CACHE_DIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import draccus  # noqa: E402
import haliax as hax  # noqa: E402
import jax  # noqa: E402
from haliax.partitioning import round_axis_for_partitioning  # noqa: E402
from levanter.trainer import Trainer, initialize  # noqa: E402

from amt.train import TrainConfig  # noqa: E402

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "amt-tiny.yaml")


def main(cache_dir: str) -> None:
    config = draccus.parse(TrainConfig, config_path=RECIPE, args=[
        "--data.cache_dir", cache_dir, "--model.hidden_dim", "32", "--model.num_heads", "2", "--model.max_seq_len", "256",
        "--trainer.train_batch_size", "8", "--trainer.mesh.axes", "{data: 4, replica: 1, model: 2}",
        "--trainer.num_train_steps", "1", "--optimizer.warmup", "0.0",
        "--trainer.checkpointer.base_path", os.path.join(cache_dir, "..", "mesh-ckpt"),
        "--trainer.log_dir", os.path.join(cache_dir, "..", "mesh-logs"),
    ])
    assert len(jax.devices()) == 8
    initialize(config)
    def loss(model, example, *, key=None):
        return model.compute_next_token_loss(example, key=key)

    with Trainer(config.trainer, config.optimizer.build(1), loss) as trainer:
        Vocab = round_axis_for_partitioning(hax.Axis("vocab", config.data.vocab_size), trainer.parameter_axis_mapping)
        model_key, data_key, train_key = jax.random.split(jax.random.PRNGKey(0), 3)
        state = trainer.initial_state(train_key, model_init=lambda: config.model.build(Vocab, key=model_key))
        dataset = config.data.train_set(config.model.max_Pos, config.trainer.batch_schedule, key=data_key)
        batch = next(iter(trainer.data_loader(dataset).iter_from_step(0)))
        info = trainer.train_step(state, batch)
        mesh = dict(trainer.device_mesh.shape)
        shardings = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(info.state.model, is_leaf=lambda x: isinstance(x, hax.NamedArray))[0]:
            if isinstance(leaf, hax.NamedArray):
                spec = leaf.array.sharding.spec
                shardings[jax.tree_util.keystr(path)] = {ax.name: spec[i] if i < len(spec) else None
                                                        for i, ax in enumerate(leaf.axes)}
        print(json.dumps({"mesh": mesh, "loss": float(info.loss), "shardings": shardings}))


if __name__ == "__main__":
    main(sys.argv[1])
