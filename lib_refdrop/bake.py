"""Fast after the first Use: the rows a trajectory reference's first Use computes, baked into the default profile.

A trajectory reference keeps only the reference's latent at each saved sigma and its conditioning, so a Use
evaluates it again in a reference pass before every U-Net call (attn/trajectory.py). Its first Use records the
rows that pass computes, exactly as a Save records a generation (``Recorder`` -> ``ReferenceWriter`` in the
background -> one rename), in the local default profile (Settings; ``lean`` unless changed), into the store's
hidden ``.baked/<seal>/`` (``ReferenceStore.open_bake``). A later Use of the same reference, matched by its seal (a
replaced or renamed reference has another one), reads them as it reads a reference of that profile and runs no
reference pass. Baked rows are read whole and checked before a Use relies on them; any that fail are dropped and
that Use runs the reference pass (and bakes again).

A Use bakes a slot's trajectory only where its pass is the whole reference: the slot's coefficient is not 0, the
step window is the whole schedule, it is the first pass of the generation (not a hires pass, not a later batch),
and, checked when the generation ends, the pass ran from the reference's highest saved sigma to its lowest at no
fewer sigmas than it keeps (an img2img denoising strength below 1 starts lower: no bake). The rows are at the first
Use's sigmas, at the reference's own size (the pass evaluates its stored latent); a later Use interpolates them in
log-sigma as it does any stored reference's rows. A first Use at the Save's steps and scheduler bakes exactly what a
Save of the reference's generation with the default profile stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attn.patches import InputPatch, Patch, make_input_save_patch, make_save_patch
from .errors import RefDropError
from .reference import compression
from .reference.profiles import DEFAULT_PROFILE, Profile, get_profile, profile_to_save
from .reference.reader import ReferenceReader, slots_of
from .reference.recorder import Recorder
from .reference.store import OpenReference, ReferenceStore
from .reference.writer import ReferenceWriter, pending_bake

WAIT_FOR_PENDING_BAKE_S = 10.0  # a bake finishing in the background: its last slots and manifest, well under this
SIGMA_TOLERANCE = 1e-3          # relative: where the pass's first and last sigma still count as the reference's ends


@dataclass
class Bake:
    """The rows of one trajectory reference, recorded from its reference pass (named ``pass_name``) in this Use."""

    pass_name: str
    source: dict  # the trajectory reference's manifest
    recorder: Recorder
    writer: ReferenceWriter


class Bakes:
    """A Use's baked rows: those it reads instead of running a reference pass, and those it bakes (at most once per
    reference and generation). ``profile``: what to bake into ("": the default); ``enabled``: False reads and bakes
    none (every Use then evaluates the trajectory again, exactly)."""

    def __init__(self, store: ReferenceStore, profile: str = "", enabled: bool = True):
        self.store = store
        self.profile = profile or DEFAULT_PROFILE
        self.enabled = enabled
        self._planned: dict[str, Bake] = {}  # the reference's seal -> its bake in this generation

    def _profile(self, projections) -> Profile | None:
        """The profile to bake into, None where its rows could not be used (a profile that keeps each layer's input,
        for a caller without the layers' projections) or there is nothing to gain (a trajectory)."""
        profile = profile_to_save(self.profile)
        if profile.keep == "trajectory" or (profile.keep == "input" and projections is None):
            return None
        return profile

    def _home(self, name: str) -> ReferenceStore | None:
        """The store holding reference ``name``, where its rows are baked; None where it is gone meanwhile."""
        try:
            return self.store.store_of(name)
        except RefDropError:
            return None

    def reader(self, opened: OpenReference, ctx) -> ReferenceReader | None:
        """The baked rows of the trajectory reference ``opened`` as a Use reads them (checked whole), or None: none
        are baked (yet), baking is off, or this caller cannot read them. A pending bake is waited for briefly."""
        if (not self.enabled or not _is_trajectory(opened.manifest) or opened.identity in self._planned
                or self._profile(ctx.projections) is None):
            return None
        home = self._home(opened.name)
        if home is None:
            return None
        pending = pending_bake(home, opened.identity)
        if pending is not None:
            pending.wait(WAIT_FOR_PENDING_BAKE_S)
        baked = home.open_bake(opened.identity, opened.name)
        if baked is None:
            return None
        try:
            _check_fits(baked.manifest, opened.manifest)
            reader = ReferenceReader(baked, projections=ctx.projections, layer_widths=ctx.layer_widths)
        except RefDropError:
            baked.close()
            home.drop_bake(opened.identity)
            return None
        try:
            reader.verify()
        except (RefDropError, TimeoutError):
            reader.close()
            home.drop_bake(opened.identity)
            return None
        return reader

    def plan(self, reader: ReferenceReader, pass_name: str, ctx, settings) -> Bake | None:
        """Start baking the trajectory reference ``reader`` from its reference pass in this sampling pass, where the
        pass is the whole reference (see the module's text); None where it is not, or it is baked already."""
        seal, home = reader.opened.identity, self._home(reader.name)
        profile = self._profile(ctx.projections)
        whole_pass = not ctx.is_hr_pass and ctx.batch_index == 0 and settings.step_start == 0 and settings.step_end == 1
        if (not self.enabled or home is None or profile is None or not whole_pass or ctx.dit_ops is not None
                or seal in self._planned or pending_bake(home, seal) is not None):
            return None
        encoding = profile.file_encoding
        if encoding == compression.ZSTD and not compression.available():  # lossless: the same rows, larger
            encoding = "raw"
        writer = ReferenceWriter(home, reader.name, overwrite=False, file_encoding=encoding, bake_of=seal)
        if writer.status.state == "failed":  # the store cannot be written: no bake, the Use goes on
            return None
        bake = self._planned[seal] = Bake(pass_name, reader.manifest, Recorder(writer, profile), writer)
        return bake

    def finish(self, generation_finished: bool) -> None:
        """The generation is over: each bake's writer gets its last slots and the manifest and commits in the
        background, or drops it where the pass was not the whole reference."""
        for seal, bake in self._planned.items():
            if bake.writer.ended:
                continue
            bake.recorder.flush()
            saved = [slot.sigma for slot in slots_of(bake.source)]
            why = ("the generation did not finish" if not generation_finished
                   else short_of(bake.recorder.sigmas_seen, saved))
            if why:
                bake.writer.abort(why)
                continue
            generation = bake.source.get("generation")
            generation = {**(generation if isinstance(generation, dict) else {}), "baked_from": seal}
            bake.writer.finish(bake.source["family"], generation, bake.recorder.recording())
        self._planned.clear()  # a host may run this Use again (a graph host's cached node): it then reads them


def short_of(seen: list[float], saved: list[float]) -> str | None:
    """Why a reference pass that ran at the sigmas ``seen`` is not the whole reference saved at ``saved`` (None:
    it is): it must span the saved sigmas, at no fewer sigmas."""
    kept = len(set(saved))
    if not seen:
        return "its reference pass did not run"
    if len(seen) < kept:
        return f"the Use evaluated it at {len(seen)} sigmas, fewer than the {kept} it keeps"
    if max(seen) < max(saved) * (1 - SIGMA_TOLERANCE) or min(seen) > min(saved) * (1 + SIGMA_TOLERANCE):
        return "the Use's schedule does not span the reference's (a denoising strength below 1, another scheduler)"
    return None


def _is_trajectory(manifest: dict) -> bool:
    try:
        return get_profile(manifest["profile"]).keep == "trajectory"
    except RefDropError:  # an unknown profile: the reader says so
        return False


def _check_fits(baked: dict, source: dict) -> None:
    """Baked rows belong to the reference whose seal names them, so they describe the same model and chunks."""
    for field in ("family", "layers", "chunks"):
        if baked[field] != source[field]:
            raise RefDropError(f"RefDrop: the baked rows of reference '{source['name']}' have another {field}")


def recording_patches(bakes: list[Bake], attn1: Patch) -> tuple[Patch, InputPatch | None]:
    """This pass's attn1 patch and attn1_patch with each bake recording what its reference pass computes: K and V
    where the attn1 patch sees them, or each layer's input before the projections (``profile.keep``), the Save's
    own patches."""
    inputs: list[InputPatch] = []
    for bake in bakes:
        if bake.recorder.profile.keep == "input":
            inputs.append(make_input_save_patch(bake.recorder, bake.pass_name))
        else:
            attn1 = make_save_patch(bake.recorder, attn1, bake.pass_name)
    return attn1, _chained(inputs)


def _chained(patches: list[InputPatch]) -> InputPatch | None:
    if len(patches) <= 1:
        return patches[0] if patches else None

    def refdrop_bake_inputs(n, context, value, extra_options):
        for patch in patches:
            n, context, value = patch(n, context, value, extra_options)
        return n, context, value

    return refdrop_bake_inputs
