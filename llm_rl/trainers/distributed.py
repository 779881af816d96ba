"""The sharding engines (FSDP2, DeepSpeed ZeRO) for the whole RL step, not only the trained model.

``accelerator.prepare`` shards the model that is trained. An RL step runs more than that:
a frozen reference, maybe a learned reward model, and ``generate``. This module makes
them work under the same engine, as TRL does (``prepare_fsdp``, ``prepare_deepspeed``,
``unwrap_model_for_generation``):

- frozen models are sharded too: FSDP2 ``fully_shard``s them per decoder layer, ZeRO-3
  partitions them through ``deepspeed.initialize`` (ZeRO-1/2 replicate them, as those
  stages shard only optimizer state and gradients, which frozen models have none of);
- generation runs on whole parameters, gathered once per rollout: sharded weights would
  be all-gathered at every decoding step, and processes that stop decoding at different
  steps would wait forever on each other's collectives;
- the final save gathers a full state dict (``accelerator.get_state_dict``).

It also lets both engines start on a machine without a GPU, over gloo, which accelerate
1.15 does not do by itself (see ``make_accelerator``).
"""

from __future__ import annotations

import atexit
import copy
import gc
import os
import weakref
from contextlib import contextmanager

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

from llm_rl.models.loading import frozen_copy, load_causal_lm


def _launched_with(engine: str) -> bool:
    """True when ``accelerate launch`` was given a config for ``engine`` (it says so in the environment)."""
    return os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true"


def make_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` for the launch configuration, on GPUs or, over gloo, on CPUs only.

    On a CPU-only machine accelerate needs ``cpu=True`` to start gloo for ``--multi_gpu``
    launches, but with it (accelerate 1.15, ``AcceleratorState.__init__``) a DeepSpeed
    config is ignored and an FSDP config silently becomes plain data parallelism
    (``MULTI_CPU``), since FSDP is switched on only for GPU-family process groups. So:
    DeepSpeed starts with ``cpu=False`` and gloo named as the backend (its CPU accelerator
    then runs over gloo), and FSDP switches the ``MULTI_CPU`` state to FSDP with the plugin
    read from the launcher's ``FSDP_*`` variables, exactly as a GPU launch builds it.
    """
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return Accelerator(**kwargs)
    if _launched_with("DEEPSPEED"):
        return Accelerator(cpu=False, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    accelerator = Accelerator(cpu=True, **kwargs)
    if _launched_with("FSDP") and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState keeps them in step
    return accelerator


def configure_deepspeed(accelerator: Accelerator, micro_batch_rows: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config values that accelerate takes from a dataloader we do not have.

    The micro-batch size is bookkeeping for DeepSpeed (the trainer builds its own batches);
    accumulation and clipping must match the trainer's, since the engine steps and clips.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_rows
    config["gradient_accumulation_steps"] = accelerator.gradient_accumulation_steps
    config["train_batch_size"] = micro_batch_rows * accelerator.gradient_accumulation_steps * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm  # 0: no clipping, as in our config
    # accelerate's wrapper steps the engine inside backward(), before optimizer_update() can look at
    # the gradient norm: the NaN/inf skip has to be the engine's own. DeepSpeed (>= 0.19) skips a step
    # whose global norm is not finite on ZeRO-3 and on fp32 ZeRO-1/2; bf16 ZeRO-1/2 only when asked.
    if config.get("bf16", {}).get("enabled") in (True, "auto"):
        config["bf16"].setdefault("check_grad_overflow", True)


def is_sharded(accelerator: Accelerator) -> bool:
    """True under FSDP or DeepSpeed, where every model a step runs needs the engine's treatment."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def is_zero3(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3


def reference_model(accelerator: Accelerator, policy, model, trust_remote_code: bool = False, dtype: str = "float32"):
    """The frozen reference: a copy of the policy, or under ZeRO-3 the same weights loaded again.

    Either way it has the policy's dtype, so the KL at the start is 0, not bf16 rounding.

    ZeRO-3 partitions parameters in place (at load with ``zero3_init_flag``, else in
    ``prepare``) and a deep copy does not survive it, so TRL loads the reference anew there too.
    """
    if not is_zero3(accelerator):
        return frozen_copy(policy)
    if not isinstance(model, str):
        raise TypeError("Under DeepSpeed ZeRO-3 pass the model as a name or folder, so the reference can be loaded from it.")
    return load_causal_lm(model, trust_remote_code, dtype).requires_grad_(False).eval()


def prepare_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A frozen model (reference, reward model) placed for inference under the run's engine."""
    model.requires_grad_(False).eval()
    if accelerator.is_fsdp2:
        return _fully_shard_frozen(accelerator, model)  # fully_shard moves each shard to the device
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return _deepspeed_frozen(accelerator, model)
    return model.to(accelerator.device)


def _fully_shard_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the rest, with the policy's precision and offload settings.

    Written here rather than through accelerate's ``fsdp2_prepare_model``: that one takes
    the layer class to wrap from the *policy* (a reward model may be another architecture)
    and reads the mesh, upcasting and RAM-efficient loading settings a frozen copy does
    not need. Embeddings and head stay in the root unit, so tied weights sit in one group.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    options = {"mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy()}
    if plugin.cpu_offload is not None:
        options["offload_policy"] = plugin.cpu_offload
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules())[1:]:
        if type(module).__name__ in layer_classes:
            fully_shard(module, **options)
    fully_shard(model, **options)
    return model


def _deepspeed_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """An inference-only DeepSpeed engine: partitioned under ZeRO-3, whole (stage 0) otherwise."""
    import deepspeed  # optional extra: pip install "llm-rl[deepspeed]"

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    if config["zero_optimization"]["stage"] != 3:
        config["zero_optimization"]["stage"] = 0
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None, unlike Module.eval
    return engine


@contextmanager
def whole_parameters(accelerator: Accelerator, model: torch.nn.Module):
    """Inside, every parameter of the prepared ``model`` is whole on every process (for ``generate``).

    FSDP2: one all-gather per unit, and no resharding after each forward until the
    block ends. ZeRO-3: ``GatheredParameters``. Other engines already hold whole weights.
    """
    if accelerator.is_fsdp2:
        with _fsdp2_unsharded(model):
            yield
    elif is_zero3(accelerator):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield
    else:
        yield


@contextmanager
def _fsdp2_unsharded(model: torch.nn.Module):
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]  # the root first
    # FSDP takes the first module to run forward as its root; PPO generates through a
    # submodule (PolicyWithValue.policy), so the root is named here, before any forward.
    units[0]._get_fsdp_state()._lazy_init()
    # torch has a setter for reshard-after-forward but no getter: read each unit's own
    # setting (accelerate gives the layers True, the root and the output head False) to restore it.
    reshard = [_reshards_after_forward(unit) for unit in units]
    for unit in units:
        unit.unshard()  # the same units in the same order on every process
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit, value in zip(units, reshard):
            unit.set_reshard_after_forward(value, recurse=False)
            unit.reshard()


def _reshards_after_forward(unit) -> bool:
    state = unit._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]
    return any(g is not None and g.post_forward_mesh_info is not None for g in groups)


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The prepared model's whole state dict, gathered from its shards; call it on every process.

    Under FSDP2 and ZeRO-3 only the main process receives it (the others get ``{}``).
    A tied weight is kept under its first name only (``lm_head.weight`` is ``embed_tokens.weight``
    in tied models): gathered copies no longer share storage, so ``save_pretrained`` would
    otherwise write both.
    """
    state = accelerator.get_state_dict(model) or {}
    first_name, aliases = {}, set()
    for name, parameter in accelerator.unwrap_model(model).named_parameters(remove_duplicate=False):
        if id(parameter) in first_name:
            aliases.add(name)
        first_name.setdefault(id(parameter), name)
    return {k: v for k, v in state.items() if k not in aliases}


def release_at_exit(trainer) -> None:
    """At interpreter exit, free ``trainer``'s (sharded) models first, then destroy the process group.

    Why: FSDP2's DTensors hold the gloo process group through their device mesh. Left alive
    into interpreter teardown, the group is destroyed there with its threads unjoined and the
    finished run aborts ("terminate called without an active exception", SIGABRT; about 1
    run in 40 on this machine, with every result already written). Freeing the models
    before ``destroy_process_group`` ended it (0 in 120). ``train()`` does not destroy the
    group itself, so a user can still save or evaluate across processes after it returns.
    """
    if not torch.distributed.is_initialized():
        return
    trainer_ref = weakref.ref(trainer)  # the hook must not keep a finished trainer alive

    def release() -> None:
        live = trainer_ref()
        if live is not None:
            live.accelerator.free_memory()  # drops accelerate's own references (and a DeepSpeed engine)
            for name in ("model", "optimizer", "scheduler", "reference", "reward_funcs"):
                live.__dict__.pop(name, None)
        gc.collect()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(release)
