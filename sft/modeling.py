"""Model and tokenizer loading: architecture detection, scratch init, dtype, quantisation, LoRA."""

from __future__ import annotations

import os
import tempfile
import warnings

import torch

from .data.encode import PromptFormat
from .errors import ModelError
from .recipe import ModelConfig, Recipe

from .families import SCRATCH as KNOWN_CONFIGS  # public configs for offline `init: scratch` (one table)
from .families import PATHS, family_of, path_of, path_of_adapter, trainer_path
from . import rundir

_CONFIGS: dict = {}


def load_config(cfg: ModelConfig):
    """The model config: local dir / Hub, else the built-in table (offline scratch), plus overrides.

    A scratch model named in the built-in table uses the table's copy of the public config directly: the
    architecture is all it needs, and offline a Hub lookup would only wait out its retries."""
    import copy

    from transformers import AutoConfig

    builtin = KNOWN_CONFIGS.get(cfg.name) if not os.path.isdir(cfg.name) and cfg.revision is None else None
    if cfg.init == "scratch" and builtin is not None:
        config = AutoConfig.for_model(builtin[0], **builtin[1])
    else:
        key = (cfg.name, cfg.revision, cfg.trust_remote_code)
        if key not in _CONFIGS or os.path.isdir(cfg.name):  # one Hub lookup per process
            try:
                _CONFIGS[key] = AutoConfig.from_pretrained(cfg.name, revision=cfg.revision,
                                                           trust_remote_code=cfg.trust_remote_code)
            except Exception as e:
                _CONFIGS[key] = e
        found = _CONFIGS[key]
        if not isinstance(found, Exception):
            config = copy.deepcopy(found)
        elif builtin is not None:
            config = AutoConfig.for_model(builtin[0], **builtin[1])
        else:
            raise ModelError(f"cannot load the config of {cfg.name!r} ({type(found).__name__}: "
                             f"{str(found).splitlines()[0][:160]})", field="model.name",
                             fix="check the id or directory (offline, only local directories and the built-in "
                                 f"architectures {', '.join(sorted(KNOWN_CONFIGS))} work)") from found
    for key, value in cfg.config_overrides.items():
        if not hasattr(config, key) and key not in getattr(config, "attribute_map", {}):
            raise ModelError(f"config has no field {key!r}", field=f"model.config_overrides.{key}",
                             fix=f"use a field of {type(config).__name__}, e.g. n_layer, n_embd, d_model, num_layers")
        try:
            setattr(config, key, value)
        except Exception as e:  # transformers 5 validates config fields on assignment
            raise ModelError(f"invalid value {value!r} ({str(e).splitlines()[0][:120]})",
                             field=f"model.config_overrides.{key}", fix="give a value of the field's type") from e
    _fit_layer_types(config)
    check_config(config)
    return config


def _fit_layer_types(config) -> None:
    """Configs with a per-layer list (Qwen2/3, Gemma 2/3: sliding vs full attention) must list every layer:
    after a num_hidden_layers override, cut or extend the list, then let transformers validate the result."""
    n, types = getattr(config, "num_hidden_layers", None), getattr(config, "layer_types", None)
    if isinstance(n, int) and isinstance(types, list) and types and len(types) != n:
        config.layer_types = (types + [types[-1]] * n)[:n]
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as e:
            raise ModelError(f"the config is inconsistent ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                             field="model.config_overrides", fix="make the overridden sizes agree") from e


# (width, heads) attribute pairs whose ratio must be whole, across families.
_HEAD_PAIRS = (("n_embd", "n_head"), ("hidden_size", "num_attention_heads"), ("d_model", "encoder_attention_heads"),
               ("d_model", "decoder_attention_heads"))
CONTEXT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


def check_config(config) -> None:
    """Catch inconsistent sizes before torch does, deep inside model construction."""
    for width_attr, heads_attr in _HEAD_PAIRS:
        width, heads = getattr(config, width_attr, None), getattr(config, heads_attr, None)
        if not isinstance(width, int) or not isinstance(heads, int):
            continue
        if width <= 0 or heads <= 0:
            raise ModelError(f"{width_attr}={width} and {heads_attr}={heads} must be positive",
                             field="model.config_overrides")
        if width % heads:
            raise ModelError(f"{heads_attr}={heads} does not divide {width_attr}={width}",
                             field=f"model.config_overrides.{heads_attr}",
                             fix=f"choose {heads_attr} dividing {width} (e.g. {_divisor_near(width, heads)})")
    for attr in ("n_layer", "num_hidden_layers", "num_layers", "vocab_size", *CONTEXT_ATTRS):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ModelError(f"{attr}={value} must be positive", field=f"model.config_overrides.{attr}")


def _divisor_near(width: int, heads: int) -> int:
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: abs(d - heads))


def context_length(config) -> int | None:
    """Longest sequence the model accepts (None: relative positions, e.g. T5)."""
    fam = family_of(getattr(config, "model_type", None))
    if fam is not None:
        value = getattr(config, fam.context_attr, None) if fam.context_attr else None
        return value if isinstance(value, int) and value > 0 else None
    for attr in CONTEXT_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_arch(cfg: ModelConfig, config=None) -> str:
    """The training path: the recipe's model.arch, else ("auto") read from the model config (loaded unless given)."""
    if cfg.arch in PATHS:
        return cfg.arch
    return trainer_path(config if config is not None else load_config(cfg))


def run_precision(recipe: Recipe):
    """The run's precision decision (sft/precision.py), for the model family of the recipe."""
    from .precision import for_recipe

    try:
        model_type = getattr(load_config(recipe.model), "model_type", None)
    except ModelError:
        model_type = None
    return for_recipe(recipe, model_type)


def quantization_config(recipe: Recipe, precision=None):
    q = recipe.quantization
    if not q.enabled:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:
        raise ModelError(f"bitsandbytes cannot run here ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
                         field="quantization.load_in_4bit" if q.load_in_4bit else "quantization.load_in_8bit",
                         fix="pip install bitsandbytes>=0.45 (4-bit runs on CUDA and CPU), or turn quantisation off"
                         ) from e
    from transformers import BitsAndBytesConfig

    compute = (precision or run_precision(recipe)).compute_dtype  # follows train.mixed_precision
    if q.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=compute)


def _auto_class(arch: str):
    import transformers

    return getattr(transformers, path_of(arch).auto_class)


def load_model(recipe: Recipe, tokenizer, arch: str, *, base_save_dir: str | None = None, precision=None,
               config=None):
    """Base model per the recipe (scratch or pretrained), quantised if asked, embeddings fit to tokenizer.

    Weights load in the dtype the run's precision decision gives (float32 master weights for full training);
    `precision` and `config` are the run context's (decided and loaded once), else decided and loaded here.
    A scratch base is saved to `base_save_dir` (if given) so that an adapter trained on it can be reloaded.
    """
    m = recipe.model
    if m.trust_remote_code:
        warnings.warn(f"model.trust_remote_code is on: code from {m.name!r} will run on this machine", stacklevel=2)
    on_gpu = torch.cuda.is_available() and not recipe.train.use_cpu
    precision = precision or run_precision(recipe)
    dtype = precision.load_dtype
    qconfig = quantization_config(recipe, precision)
    attn = {"attn_implementation": m.attn_implementation} if m.attn_implementation else {}
    cls = _auto_class(arch)
    if m.init == "scratch":
        import copy

        config = copy.deepcopy(config) if config is not None else load_config(m)  # (its sizes are set below)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if path_of(arch).encoder_decoder:  # T5's convention: the decoder starts from the pad token
            config.decoder_start_token_id = tokenizer.pad_token_id
        torch.manual_seed(recipe.train.seed)
        model = _attention_checked(lambda: cls.from_config(config, **attn))
        if base_save_dir:
            model.save_pretrained(base_save_dir)
            tokenizer.save_pretrained(base_save_dir)
        if qconfig is not None:  # quantise the random weights by a save/load round trip
            with tempfile.TemporaryDirectory() as tmp:
                src = base_save_dir or tmp
                if not base_save_dir:
                    model.save_pretrained(tmp)
                model = cls.from_pretrained(src, quantization_config=qconfig, dtype=dtype, trust_remote_code=False,
                                            device_map=_device_map(on_gpu), **attn)
        else:
            model = model.to(dtype)
    else:
        kwargs = dict(revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=dtype,
                      use_safetensors=None if m.allow_pickle else True, **attn, **m.init_kwargs)
        if qconfig is not None:
            kwargs.update(quantization_config=qconfig, device_map=_device_map(on_gpu))
        try:
            model = cls.from_pretrained(m.name, **kwargs)
        except Exception as e:
            msg = str(e).splitlines()[0][:200]
            fix = "check model.name (offline only local directories load)"
            if "safetensors" in msg.lower() and not m.allow_pickle:
                fix = "this checkpoint has no safetensors weights; set model.allow_pickle: true only if you trust it"
            raise ModelError(f"cannot load model {m.name!r} ({type(e).__name__}: {msg})", field="model.name",
                             fix=fix) from e
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = PromptFormat(recipe, tokenizer, arch).generation_eos
    return model


def _attention_checked(build):
    """transformers refuses an attention kernel the model class lacks: say so in one line."""
    try:
        return build()
    except (ValueError, ImportError) as e:
        msg = str(e).splitlines()[0][:200]
        if "attention" not in msg.lower() and "attn" not in msg.lower():
            raise
        raise ModelError(f"this model cannot use that attention kernel ({msg})", field="model.attn_implementation",
                         fix="use sdpa or eager, or leave it unset") from e


def _device_map(on_gpu: bool):
    if on_gpu:
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def linear_module_names(model) -> list[str]:
    """Unique leaf names of the layers LoRA can adapt (Linear, Conv1D, 4/8-bit Linear)."""
    names = set()
    for full, mod in model.named_modules():
        cls = type(mod).__name__
        if cls in ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt") and full:
            names.add(full.split(".")[-1])
    return sorted(names)


def lora_targets(recipe: Recipe, model) -> list[str] | str:
    """lora.target_modules, `all-linear`, or the family's default (attention and MLP for Llama-style models)."""
    if recipe.lora.target_modules == ["all-linear"]:
        return "all-linear"  # peft: every linear layer except the output head
    fam = family_of(model.config.model_type)
    targets = recipe.lora.target_modules or (list(fam.lora_targets) if fam else None)
    if not targets:
        raise ModelError(f"no default LoRA targets for model type {model.config.model_type!r}",
                         field="lora.target_modules", fix=f"choose from {linear_module_names(model)}")
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelError(f"LoRA target(s) {missing} match no layer of {model.config.model_type}",
                         field="lora.target_modules", fix=f"choose from the model's linear layers {available}")
    return targets


def apply_lora(recipe: Recipe, model, arch: str):
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if recipe.quantization.enabled:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    config = LoraConfig(
        r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
        target_modules=lora_targets(recipe, model), bias=recipe.lora.bias,
        modules_to_save=recipe.lora.modules_to_save or None,
        task_type=getattr(TaskType, path_of(arch).peft_task),
        fan_in_fan_out=bool(getattr(family_of(model.config.model_type), "conv1d", False)),
        use_dora=recipe.lora.use_dora, use_rslora=recipe.lora.use_rslora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # packed: two 4-bit values per byte
            n = n * 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


# Files a Hub download brings for inference: weights as safetensors only (pickled weights run code on load).
_HUB_IGNORE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.tflite", "*.ot",
               "checkpoint-*/*", "runs/*", "original/*")


def resolve_model_dir(spec: str) -> str:
    """A local model folder as it is; a Hub id (`owner/name`, `name@revision`) downloaded into (or, offline, found
    in) the Hugging Face cache: the folder its files are in."""
    if os.path.isdir(spec):
        return spec
    fix = "pass an sft output_dir, a local model folder, or a Hub id such as OWNER/NAME"
    if os.path.exists(spec):
        raise ModelError("not a model folder (a file)", file=spec, fix=fix)
    repo, _, revision = spec.partition("@")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if spec.startswith((".", "/", "~")) or spec.endswith("/") or os.sep + os.sep in spec:
            raise HFValidationError(spec)
        validate_repo_id(repo)
    except HFValidationError:
        raise ModelError("model directory not found", file=spec, fix=fix) from None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=revision or None, ignore_patterns=list(_HUB_IGNORE))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelError(f"cannot fetch {spec!r} from the Hub ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                         file=spec, fix="check the id (and HF_TOKEN for a private repo)" + (
                             "; offline (HF_HUB_OFFLINE=1) only models already in the Hugging Face cache load"
                             if offline else " and the network")) from e


def folder_arch(folder: str, *, trust_remote_code: bool = False) -> str:
    """The training path of a trained model folder, from its own files: an adapter's task type, else its config."""
    import json

    adapter_cfg = os.path.join(folder, rundir.ADAPTER_CONFIG)
    if os.path.exists(adapter_cfg):
        with open(adapter_cfg, encoding="utf-8") as fh:
            return path_of_adapter(json.load(fh).get("task_type")).name
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:
        why = str(e).splitlines()[0][:160] if str(e) else ""
        raise ModelError(f"cannot read the model config ({type(e).__name__}: {why})", file=folder,
                         fix="pass a finished sft run or a model folder with config.json") from e
    return trainer_path(config)


def load_for_inference(output_dir: str, *, device: str | None = None, dtype: torch.dtype | None = None,
                       trust_remote_code: bool = False):
    """(model, tokenizer, arch) from a training output dir, a merged model, an adapter-only dir, any Hugging Face
    model folder, or a Hub id (see resolve_model_dir; a caller that needs the folder resolves it first)."""
    from peft import PeftConfig, PeftModel

    from .tokenizer import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = resolve_model_dir(output_dir)
    adapter_cfg = os.path.join(output_dir, rundir.ADAPTER_CONFIG)
    if not os.path.exists(adapter_cfg) and not os.path.exists(os.path.join(output_dir, rundir.MODEL_CONFIG)):
        unfinished = any(d.startswith("checkpoint-") for d in os.listdir(output_dir))
        raise ModelError("no trained model here (no config.json or adapter_config.json)", file=output_dir,
                         fix="the run did not finish: continue it with sft train RECIPE --resume" if unfinished
                         else "pass the output_dir of a finished sft train run")
    # Code is never run from a model folder: trust_remote_code stays off unless the run's recipe opted in.
    trust = trust_remote_code
    tokenizer = load_tokenizer(output_dir, trust_remote_code=trust)
    try:
        if os.path.exists(adapter_cfg):
            peft_cfg = PeftConfig.from_pretrained(output_dir)
            base_dir = peft_cfg.base_model_name_or_path
            local_base = os.path.join(output_dir, "base_model")
            if os.path.isdir(local_base):  # scratch bases are saved beside the adapter
                base_dir = local_base
            elif base_dir and not os.path.isdir(base_dir) and (base_dir.startswith((".", "/")) or
                                                              os.path.basename(base_dir) == "base_model"):
                raise ModelError(f"the adapter's base model {base_dir!r} is missing", file=adapter_cfg,
                                 fix="restore the base model folder, or retrain")
            arch = folder_arch(output_dir)
            base = _auto_class(arch).from_pretrained(base_dir, dtype=dtype or torch.float32, trust_remote_code=trust)
            model = PeftModel.from_pretrained(base, output_dir)
        else:
            arch = folder_arch(output_dir, trust_remote_code=trust)
            model = _auto_class(arch).from_pretrained(output_dir, dtype=dtype or torch.float32,
                                                      trust_remote_code=trust)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         file=output_dir, fix="check that the folder holds a complete sft output or model "
                         "(custom model code is not run unless the run's recipe set model.trust_remote_code)") from e
    model.to(device).eval()
    return model, tokenizer, arch
