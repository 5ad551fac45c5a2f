"""Peers of the throughput benchmark: HF transformers ``generate`` and vLLM, plus environment info.

HF: the model is rebuilt as transformers' own ``*ForCausalLM`` from the same config, and
tritium's weights are copied in (fused q/k/v and gate/up split back into HF's tensors), so both
engines run identical weights in the same dtype on the same device. vLLM: imported only when
installed; it runs ``load_format="dummy"`` (its own random weights) of the same shape, which
is throughput-equivalent under ``ignore_eos``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
from typing import Any

import torch

from tritium.bench.throughput import EngineResult, Workload, loadavg_1min
from tritium.models.config import ModelConfig
from tritium.models.presets import num_parameters

_HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM"}


# -- environment ---------------------------------------------------------------------------

def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: str) -> dict[str, Any]:
    """Versions, device name, date (UTC), threads, and on CPU the load average at the start."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("tritium", "torch", "triton", "transformers", "vllm")},
        "torch_threads": torch.get_num_threads(),
        "cpu_model": _cpu_model(),
        "cpu_cores": cores,
    }
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = f"{env['cpu_model']} ({cores} cores)"
        try:
            with open("/proc/loadavg") as f:
                env["loadavg_1_5_15"] = [float(x) for x in f.read().split()[:3]]
        except OSError:
            pass
    return env


def model_flops_per_token(mc: ModelConfig) -> float:
    """2 x parameters that every token goes through (no embedding, no LM head, no attention)."""
    embed = mc.vocab_size * mc.hidden_size
    head = 0 if mc.tie_word_embeddings else embed
    return 2.0 * (num_parameters(mc) - embed - head)


# -- HF transformers -----------------------------------------------------------------------

def hf_config_dict(mc: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> an HF config.json dict (legacy rope keys: transformers 4 and 5 read them)."""
    family = mc.architecture
    d: dict[str, Any] = {
        "model_type": _HF_MODEL_TYPES[family], "architectures": [_HF_CLASSES[family]],
        "vocab_size": mc.vocab_size, "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size, "num_hidden_layers": mc.num_hidden_layers,
        "num_attention_heads": mc.num_attention_heads,
        "num_key_value_heads": mc.num_key_value_heads, "head_dim": mc.head_dim,
        "rms_norm_eps": mc.rms_norm_eps, "rope_theta": mc.rope_theta,
        "max_position_embeddings": mc.max_position_embeddings,
        "tie_word_embeddings": mc.tie_word_embeddings, "hidden_act": "silu",
        "bos_token_id": mc.bos_token_id,
        "eos_token_id": mc.eos_token_ids[0] if len(mc.eos_token_ids) == 1 else mc.eos_token_ids,
    }
    if mc.rope_scaling is not None:
        d["rope_scaling"] = dict(mc.rope_scaling)
    if family == "llama":
        d["attention_bias"] = mc.attention_bias
    if family in ("mistral", "qwen2"):
        d["sliding_window"] = mc.sliding_window
        if family == "qwen2":
            d["use_sliding_window"] = mc.sliding_window is not None
    return d


def hf_state_dict(model: torch.nn.Module, mc: ModelConfig) -> dict[str, torch.Tensor]:
    """tritium's parameters under HF names: fused qkv/gate_up split back (views, no copies)."""
    q = mc.num_attention_heads * mc.head_dim
    kv = mc.num_key_value_heads * mc.head_dim
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if ".self_attn.qkv_proj." in name:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), t.split([q, kv, kv])):
                out[name.replace("qkv_proj", part)] = piece
        elif ".mlp.gate_up_proj." in name:
            for part, piece in zip(("gate_proj", "up_proj"), t.chunk(2)):
                out[name.replace("gate_up_proj", part)] = piece
        else:
            out[name] = t
    return out


def build_hf_model(model: torch.nn.Module, mc: ModelConfig, dtype: torch.dtype,
                   device: str, attn_implementation: str) -> torch.nn.Module:
    """An HF ``*ForCausalLM`` of ``mc`` holding a copy of ``model``'s weights, in eval mode."""
    import transformers

    cfg = transformers.AutoConfig.for_model(**hf_config_dict(mc))
    with torch.device(device):
        try:
            hf = transformers.AutoModelForCausalLM.from_config(
                cfg, dtype=dtype, attn_implementation=attn_implementation)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            hf = transformers.AutoModelForCausalLM.from_config(
                cfg, torch_dtype=dtype, attn_implementation=attn_implementation)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model, mc), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and mc.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"HF model does not match tritium's weights: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if mc.tie_word_embeddings:
        hf.tie_weights()
    # generate() fills unset fields from the model's generation config: clear its EOS (the
    # workload ignores EOS) so no EosTokenCriteria is added; pad 0 only fills masked positions.
    from transformers import GenerationConfig

    hf.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0, bos_token_id=None)
    return hf.eval()


def _hf_batches(hf: torch.nn.Module, wl: Workload, batch_size: int, temperature: float,
                device: str) -> int:
    """Run every batch through ``generate``; returns generated tokens (padding rows included)."""
    from transformers import GenerationConfig

    generated = 0
    for start in range(0, len(wl.prompts), batch_size):
        prompts = wl.prompts[start:start + batch_size]
        max_new = max(wl.output_lens[start:start + batch_size])
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last token is at the end
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        # Pure temperature sampling like tritium's (top_k=0: HF's default would be 50), or greedy.
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        gen = GenerationConfig(max_new_tokens=max_new, eos_token_id=None, pad_token_id=0,
                               bos_token_id=None, use_cache=True,
                               **(sampling if temperature > 0 else {"do_sample": False}))
        with torch.inference_mode():
            out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                              generation_config=gen)
        new = out.shape[1] - width
        if new != max_new:
            raise RuntimeError(f"HF generate stopped after {new} of {max_new} new tokens")
        generated += new * len(prompts)
    return generated


def run_hf(hf: torch.nn.Module, wl: Workload, warmup: Workload | None,
           args: argparse.Namespace) -> EngineResult:
    """HF ``generate`` (model from :func:`build_hf_model`) over the workload in static
    left-padded batches (see the module doc)."""
    if warmup is not None:
        _hf_batches(hf, warmup, args.hf_batch_size, args.temperature, args.device)
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        torch.cuda.synchronize()
    load_before = loadavg_1min()
    t0, c0 = time.perf_counter(), time.process_time()
    generated = _hf_batches(hf, wl, args.hf_batch_size, args.temperature, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return EngineResult(
        "hf", len(wl.prompts), wl.num_input_tokens, wl.num_output_tokens, elapsed,
        cpu_time_s=cpu,
        extra={"generated_tokens": generated, "batch_size": args.hf_batch_size,
               "attn_implementation": args.hf_attn_implementation,
               "loadavg_1min_before_after": [load_before, loadavg_1min()],
               "counting": "useful output tokens = each request's own output length; "
                           "generated_tokens also counts each row's tokens past its length "
                           "(every batch runs to its longest request)"},
    )


# -- vLLM ----------------------------------------------------------------------------------

def _not_run(engine: str, status: str) -> EngineResult:
    return EngineResult(engine, 0, 0, 0, 0.0, extra={"status": status})


def run_vllm(mc: ModelConfig, wl: Workload, warmup: Workload | None,
             args: argparse.Namespace) -> EngineResult:
    """vllm.LLM with dummy weights of the same shape; 'not available' when vLLM is absent."""
    if importlib.util.find_spec("vllm") is None:
        return _not_run("vllm", "not available (vllm is not installed)")
    try:
        import vllm
        from vllm.inputs import TokensPrompt

        folder = tempfile.mkdtemp(prefix="tritium-bench-vllm-")
        cfg = dict(hf_config_dict(mc), torch_dtype=str(args.resolved_dtype))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        llm = vllm.LLM(
            model=folder, load_format="dummy", skip_tokenizer_init=True,
            dtype=str(args.resolved_dtype), seed=args.seed, max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
            kv_cache_dtype=args.kv_cache_dtype, enable_prefix_caching=args.enable_prefix_caching,
        )

        def generate(w: Workload) -> list[Any]:
            prompts = [TokensPrompt(prompt_token_ids=p) for p in w.prompts]
            params = [vllm.SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=n,
                                          ignore_eos=True, detokenize=False)
                      for n in w.output_lens]
            return llm.generate(prompts, params, use_tqdm=False)

        if warmup is not None:
            generate(warmup)
        t0 = time.perf_counter()
        outs = generate(wl)
        elapsed = time.perf_counter() - t0
    except Exception as e:  # a peer failing must not lose tritium's result
        return _not_run("vllm", f"failed: {type(e).__name__}: {e}")
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    return EngineResult("vllm", len(outs), wl.num_input_tokens, produced, elapsed,
                        extra={"weights": "dummy (random) of the same shape",
                               "version": _version("vllm")})
