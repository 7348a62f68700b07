"""One training step on a simulated 8-device CPU mesh (data 4 x model 2); prints each parameter's sharding, and
the step's loss again with `model.fused_attention` (the batch over the data axis, the heads over the model
axis: what the 8-GPU recipe's attention does to a sharded batch, in XLA's form), and with
`model.grad_in_forward_token_block_size` where the installed Levanter has its kernel.

Run as a subprocess by test_train.py (the device count must be set before jax starts):
    python tests/mesh_step.py CACHE_DIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import draccus  # noqa: E402
import equinox as eqx  # noqa: E402
import haliax as hax  # noqa: E402
import jax  # noqa: E402
import optax  # noqa: E402
from haliax.partitioning import round_axis_for_partitioning  # noqa: E402
from levanter.trainer import Trainer, initialize  # noqa: E402
from levanter.utils.tree_utils import inference_mode  # noqa: E402

from amt.train import (TrainConfig, _weighted_sum_kernel, fused_attention, loss_gradients_in_forward,  # noqa: E402
                       one_process_unless_a_cluster)

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "amt-tiny.yaml")


def main(cache_dir: str) -> None:
    config = draccus.parse(TrainConfig, config_path=RECIPE, args=[
        "--data.cache_dir", cache_dir, "--model.hidden_dim", "32", "--model.num_heads", "2", "--model.max_seq_len", "256",
        "--trainer.train_batch_size", "8", "--trainer.mesh.axes", "{data: 4, replica: 1, model: 2}",
        "--trainer.num_train_steps", "1", "--optimizer.warmup", "0.0",
        "--trainer.checkpointer.base_path", os.path.join(cache_dir, "..", "mesh-ckpt"),
        "--trainer.log_dir", os.path.join(cache_dir, "..", "mesh-logs"),
    ])
    # one process where only mpi4py is installed (workaround 5, as `amt train` does: the GPU machines have it)
    config = one_process_unless_a_cluster(config)
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
        # the loss and its gradient's norm (dropout off) with Levanter's attention and with the fused one, each
        # traced afresh under the mesh (the attention is chosen when tracing), before the step donates the state
        def loss_and_gradient_norm(model):
            value, grads = eqx.filter_value_and_grad(lambda m: loss(m, batch).scalar())(inference_mode(model, True))
            return value, optax.global_norm(eqx.filter(grads, eqx.is_array))

        traced = []  # the fused attention's calls of jax.nn.dot_product_attention (one: the layers are a scan)
        library = jax.nn.dot_product_attention
        jax.nn.dot_product_attention = lambda *args, **kwargs: traced.append(1) or library(*args, **kwargs)
        try:
            with hax.partitioning.set_mesh(trainer.device_mesh), hax.axis_mapping(trainer.compute_axis_mapping):
                plain = eqx.filter_jit(loss_and_gradient_norm)(state.model)
                with fused_attention():  # (a function of its own: equinox caches a function's trace)
                    fused = eqx.filter_jit(lambda model: loss_and_gradient_norm(model))(state.model)
                in_forward = None  # the loss's gradients in its forward, each shard's sums added over the mesh
                if _weighted_sum_kernel() is not None:
                    with loss_gradients_in_forward(96):  # (2 x 256 positions a shard: a padded last block)
                        in_forward = eqx.filter_jit(lambda model: loss_and_gradient_norm(model))(state.model)
        finally:
            jax.nn.dot_product_attention = library
        info = trainer.train_step(state, batch)
        mesh = dict(trainer.device_mesh.shape)
        shardings = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(info.state.model, is_leaf=lambda x: isinstance(x, hax.NamedArray))[0]:
            if isinstance(leaf, hax.NamedArray):
                spec = leaf.array.sharding.spec
                shardings[jax.tree_util.keystr(path)] = {ax.name: spec[i] if i < len(spec) else None
                                                        for i, ax in enumerate(leaf.axes)}
        print(json.dumps({"mesh": mesh, "loss": float(info.loss), "shardings": shardings,
                          "attention": {"levanter": [float(x) for x in plain], "fused": [float(x) for x in fused],
                                        "fused_calls": len(traced)},
                          "grad_in_forward": None if in_forward is None else [float(x) for x in in_forward]}))


if __name__ == "__main__":
    main(sys.argv[1])
