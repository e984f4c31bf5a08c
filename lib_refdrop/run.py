"""RefDrop's part in one generation: from validated settings to the patch of each sampling pass.

The host wiring (``scripts/refdrop.py``) creates one ``RefDropRun`` per generation and asks it for a patch
before every sampling pass; everything host-specific reaches it as plain values and callables, so this module
is driven directly by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import families
from .attn.patches import Patch, make_failing_patch, make_save_patch, make_use_patch, plan_use
from .errors import RefDropError
from .params import RefDropSettings
from .reference.names import automatic_name
from .reference.profiles import get_profile
from .reference.reader import ReferenceReader
from .reference.recorder import Recorder
from .reference.store import ReferenceStore
from .reference.writer import ReferenceWriter, abandon_unfinished, pending_write

WAIT_FOR_PENDING_SAVE_S = 300.0
# How every message about a Save still being written begins (the text under the images, the panel's status line);
# javascript/refdrop.js polls the panel while it sees it.
SAVING = "RefDrop: saving reference"


@dataclass
class PassContext:
    """What the host tells RefDrop about one sampling pass."""

    family: str
    is_hr_pass: bool
    percent_to_sigma: Callable[[float], float]
    attention: Callable            # the host attention function (q, k, v, extra_options) -> out
    inner: Callable                # what attn1 computes without RefDrop (host attention or an earlier patch)
    seed: int | None = None


class RefDropRun:
    def __init__(self, settings: RefDropSettings, store: ReferenceStore, default_profile: str = ""):
        self.settings = settings
        self.store = store
        self.default_profile = default_profile
        self.recorder: Recorder | None = None
        self.writer: ReferenceWriter | None = None
        self.save_name: str | None = None
        self.family = "unknown"
        self._readers: list[ReferenceReader] = []  # Use: one per sampling pass, closed by ``release``

    def patch_for_pass(self, ctx: PassContext) -> Patch | None:
        """``plan_patch`` for a host: a problem becomes a patch that fails at the first attn1 call, since the hosts
        swallow exceptions raised in their hooks but stop the generation with one raised inside a patch."""
        try:
            return self.plan_patch(ctx)
        except RefDropError as exc:
            return make_failing_patch(str(exc))

    def plan_patch(self, ctx: PassContext) -> Patch | None:
        """The attn1 patch for this pass, None to leave it plain; RefDropError when it cannot be planned."""
        if self.settings.saving:
            return self._save_patch(ctx)
        if self.settings.using:
            return self._use_patch(ctx)
        return None

    def _save_patch(self, ctx: PassContext) -> Patch | None:
        if ctx.is_hr_pass or self.writer is not None:
            return None  # the reference is the first pass of the first batch
        self.save_name = self.settings.save_name or self._free_automatic_name(ctx.seed)
        profile = get_profile(self.settings.profile or self.default_profile)
        self.writer = ReferenceWriter(self.store, self.save_name, self.settings.overwrite)
        self.recorder = Recorder(self.writer, profile)
        self.family = ctx.family
        return make_save_patch(self.recorder, ctx.inner)

    def _free_automatic_name(self, seed) -> str:
        """``ref-<seed>-<time>``, with a counter when that is taken (X/Y/Z Save cells within one second)."""
        base = automatic_name(seed)
        name, n = base, 1
        while self.store.exists(name) or pending_write(name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name

    def _use_patch(self, ctx: PassContext) -> Patch | None:
        if ctx.is_hr_pass and not self.settings.apply_hires:
            return None
        name = self.settings.reference
        if not name:
            raise RefDropError("RefDrop: Use is on but no reference is selected")
        writer = pending_write(name)
        if writer is not None and not writer.wait(WAIT_FOR_PENDING_SAVE_S):
            raise RefDropError(f"RefDrop: reference '{name}' is still being written; try again when it is saved")
        opened = self.store.open(name)  # one version, whatever another client writes meanwhile; not found: raises
        problem = families.mismatch(name, opened.manifest["family"], ctx.family)
        if problem or self.settings.rfg == 0:  # c = 0 is a plain generation, exactly: no patch at all
            opened.close()
            if problem:
                raise RefDropError(problem)
            return None
        window = (ctx.percent_to_sigma(self.settings.step_start), ctx.percent_to_sigma(self.settings.step_end))
        reader = ReferenceReader(opened)
        self._readers.append(reader)
        plan = plan_use(reader.manifest, self.settings, window)
        return make_use_patch(reader, plan, ctx.attention, ctx.inner)

    def release(self) -> None:
        """The generation is over: close the references Use opened (their files stay open until then)."""
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    def finish_save(self, generation: dict, preview) -> str:
        """End of the generation: hand the rest of the recording and the manifest to the writer."""
        if self.writer is None:
            return ""
        self.recorder.flush()
        if not self.recorder.recorded_anything:
            self.writer.abort("no self-attention layer was called")
        else:
            self.writer.finish(self.family, generation, self.recorder.recording(), preview)
        return f"{SAVING} '{self.save_name}' in the background"


def abandon_unfinished_saves() -> None:
    """A generation that failed or was interrupted never reaches postprocess; drop its half reference."""
    abandon_unfinished()
