"""By hand (docs/flux.md, "Checked in the hosts' code"): each host's own Flux module, with a tiny config and the
weights of the tests' model (tests/support/tinyflux.py), through RefDrop's Flux path; then the host's own
ModelPatcher (clone, set_model_patch_replace / add_object_patch, forge_patch_model / forge_unpatch_model).

    <host venv>/bin/python docs/flux_hostcheck.py reforge|forge <repository root> [<host checkout>]

It imports the host from its checkout (default /tmp/hosts/<host>, with its dependencies in the venv) and is no
test: the test suite never needs a host.
"""

import contextlib
import os
import sys
import tempfile
import types

FLAVOUR, REPO = sys.argv[1], sys.argv[2]
HOST_DIR = sys.argv[3] if len(sys.argv) > 3 else f"/tmp/hosts/{FLAVOUR}"
sys.argv = [sys.argv[0], "--always-cpu", "--all-in-fp32", "--attention-pytorch"]  # what the hosts parse at import
sys.path[:0] = [HOST_DIR, f"{HOST_DIR}/packages_3rdparty", REPO]
os.chdir(HOST_DIR)

import torch  # noqa: E402

from lib_refdrop.params import build  # noqa: E402
from lib_refdrop.reference.store import ReferenceStore  # noqa: E402
from lib_refdrop.run import RefDropRun  # noqa: E402
from tests.support import tinyflux as tf  # noqa: E402

torch.set_num_threads(1)
CONFIG = dict(vec_in_dim=tf.VEC_DIM, context_in_dim=tf.CONTEXT_DIM, hidden_size=tf.HIDDEN, mlp_ratio=2.0,
              num_heads=tf.HEADS, depth=tf.DOUBLE_BLOCKS, depth_single_blocks=tf.SINGLE_BLOCKS,
              axes_dim=list(tf.AXES), theta=10000, qkv_bias=True, guidance_embed=True)


def host_model():
    if FLAVOUR == "reforge":
        import ldm_patched.modules.options

        ldm_patched.modules.options.enable_args_parsing()
        import ldm_patched.modules.ops as ops
        from ldm_patched.ldm.flux.model import Flux

        from lib_refdrop.webui.hosts import reforge as adapter

        model = Flux(in_channels=tf.LATENT_CHANNELS, out_channels=tf.LATENT_CHANNELS, patch_size=2,
                     operations=ops.disable_weight_init, dtype=torch.float32, **CONFIG)
    else:
        from backend.nn.flux import IntegratedFluxTransformer2DModel

        from lib_refdrop.webui.hosts import forge as adapter

        model = IntegratedFluxTransformer2DModel(in_channels=tf.LATENT_CHANNELS, **CONFIG)
    return model, adapter.host()


class Holder(torch.nn.Module):
    """``unet.model``: the diffusion model and the schedule where the host keeps it."""

    def __init__(self, model):
        super().__init__()
        self.diffusion_model = model
        setattr(self, "predictor" if FLAVOUR == "forge" else "model_sampling", tf.FlowSchedule())


def fake_patcher(model):
    return tf.FluxPatcher(Holder(model))


def host_patcher(model):
    """The host's own ModelPatcher; ``loaded`` does what load_models_gpu does around sampling (Forge: object
    patches applied, then put back)."""
    cpu = torch.device("cpu")
    if FLAVOUR == "forge":
        from backend.patcher.base import ModelPatcher

        @contextlib.contextmanager
        def loaded(self):
            self.forge_patch_model()
            try:
                yield
            finally:
                self.forge_unpatch_model()
    else:
        from ldm_patched.modules.model_patcher import ModelPatcher

        def loaded(self):
            return contextlib.nullcontext()
    patcher = ModelPatcher(Holder(model), load_device=cpu, offload_device=cpu)
    return patcher, loaded


def diff(a, b):
    return f"max|diff| {float((a - b).abs().max()):.3g} equal={torch.equal(a, b)}"


def generate(host, unet, values, store, seed, loaded=None):
    run = RefDropRun(build({"enabled": True, **values}), store)
    p = tf.make_p(unet)
    host.install(p, host.pass_patches(p, run))  # the script's one path for a pass
    patched = p.sd_model.forge_objects.unet
    if loaded is not None:
        patched.loaded = types.MethodType(loaded, patched)
    out = tf.sample(patched, seed=seed)
    return out, run, patched


def main():
    model, host = host_model()
    # the tests' model under the host's class name: RefDrop reaches Forge's blocks by object patches, reForge's
    # through the dit hook, and tells which from the class (a Forge-convention model named Flux would be left plain)
    tiny = tf.make_patcher(FLAVOUR).model.diffusion_model
    missing, unexpected = model.load_state_dict(tiny.state_dict(), strict=False)
    print("state dict: missing", missing, "unexpected", unexpected)
    model.eval().requires_grad_(False)
    theirs, ours = fake_patcher(model), fake_patcher(tiny)
    store = ReferenceStore(tempfile.mkdtemp())
    print("plain: host module vs tests' model:", diff(tf.sample(theirs, seed=1), tf.sample(ours, seed=1)))
    results = {}
    for name, unet in (("host", theirs), ("tests", ours)):
        saved, run, _ = generate(host, unet, {"mode": "Save", "save_name": f"fox-{name}", "profile": "exact"},
                                  store, 1)
        run.finish_save({"seed": 1}, None)
        run.writer.wait(60)
        print(name, "save:", run.writer.status.message, "| save vs plain", diff(saved, tf.sample(unet, seed=1)))
        for rfg in (-0.5, 0.3, 1.0):
            for seed in (1, 5):
                values = {"mode": "Use", "reference": f"fox-{name}", "rfg": rfg}
                results[(name, rfg, seed)], run, _ = generate(host, unet, values, store, seed)
                run.release()
            change = float((results[(name, rfg, 5)] - tf.sample(unet, seed=5)).abs().mean())
            print(f"  {name} c={rfg}: use at the save's settings vs save {diff(results[(name, rfg, 1)], saved)};"
                  f" seed 5 change vs plain {change:.4f}")
    for rfg in (-0.5, 0.3, 1.0):
        print(f"c={rfg} seed 5: host module vs tests' model through RefDrop:",
              diff(results[("host", rfg, 5)], results[("tests", rfg, 5)]))

    real, loaded = host_patcher(model)
    real.loaded = types.MethodType(loaded, real)
    plain = tf.sample(real, seed=5)
    print("host patcher, plain vs tests' model:", diff(plain, tf.sample(ours, seed=5)))
    blocks = list(model.double_blocks) + list(model.single_blocks)
    for rfg in (0.3, 1.0):
        values = {"mode": "Use", "reference": "fox-host", "rfg": rfg}
        out, run, patched = generate(host, real, values, store, 5, loaded)
        run.release()
        dit = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        print(type(patched).__name__, "clone is new:", patched is not real, "object patches:",
              len(getattr(patched, "object_patches", {})), "dit replacements:", len(dit))
        print(f"  c={rfg}: host patcher vs fake patcher through RefDrop:", diff(out, results[("host", rfg, 5)]))
        print("  after: the host's plain model again:", diff(tf.sample(real, seed=5), plain),
              "| each block's forward is its class's:",
              all(getattr(b.forward, "__func__", None) is type(b).forward for b in blocks))


main()
