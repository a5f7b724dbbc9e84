"""Router hooks on tiny, randomly initialised HF MoE models built from their configs
(no download): one record per token per MoE layer, top_k distinct experts each."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vibe.cli import main  # noqa: E402
from vibe.model import ExpertLoads, RoutingTrace  # noqa: E402
from vibe.profile.routing import find_routers, read_dataset, record_routing  # noqa: E402

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DEEPSEEK = dict(n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=1,
                 first_k_dense_replace=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
# family -> (config overrides, decoder ids of the MoE layers)
FAMILIES = {
    "mixtral": (dict(num_local_experts=8, num_experts_per_tok=2), (0, 1, 2)),
    "qwen2_moe": (dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=16, decoder_sparse_step=1), (0, 1, 2)),
    "qwen3_moe": (dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=16,
                       mlp_only_layers=[1]), (0, 2)),
    "olmoe": (dict(num_experts=8, num_experts_per_tok=2), (0, 1, 2)),
    "deepseek_v2": (dict(_DEEPSEEK, q_lora_rank=None, n_group=1, topk_group=1, topk_method="greedy"), (1, 2)),
    "deepseek_v3": (dict(_DEEPSEEK, q_lora_rank=16, n_group=2, topk_group=1), (1, 2)),
}


def tiny_model(family: str, seed: int = 0):
    overrides, _ = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(family, **COMMON, **overrides)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def random_sequences(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_record_per_token_per_moe_layer(family):
    model = tiny_model(family)
    seqs = random_sequences([7, 3, 12, 5, 9])
    trace = record_routing(model, seqs, batch_size=2)
    _, moe_layers = FAMILIES[family]
    k = model.config.num_experts_per_tok
    assert trace.layer_ids == moe_layers
    assert trace.experts.shape == (len(moe_layers), sum(map(len, seqs)), k)
    assert list(np.diff(trace.seq_offsets)) == [7, 3, 12, 5, 9]
    ex = np.sort(trace.experts, axis=-1)
    assert np.all(ex[..., 1:] != ex[..., :-1]), "a token picked the same expert twice"
    assert ex.min() >= 0 and ex.max() < trace.num_experts
    assert np.all(trace.counts().sum(axis=1) == trace.num_tokens * k)


def test_padding_does_not_change_routing():
    model = tiny_model("qwen3_moe", seed=3)
    seqs = random_sequences([11, 2, 6, 9, 4], seed=5)
    one_by_one = record_routing(model, seqs, batch_size=1)
    padded = record_routing(model, seqs, batch_size=5)
    assert np.array_equal(np.sort(one_by_one.experts, -1), np.sort(padded.experts, -1))


def test_hooks_agree_with_the_models_own_router_logits():
    # Mixtral can return its router logits: their top_k must be what the hooks recorded.
    model = tiny_model("mixtral", seed=1)
    seqs = random_sequences([10, 10, 10], seed=2)
    trace = record_routing(model, seqs, batch_size=3)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor(seqs), output_router_logits=True)
    for row, logits in enumerate(out.router_logits):
        ref = torch.topk(logits, 2, dim=-1).indices.numpy()
        assert np.array_equal(np.sort(ref, -1), np.sort(trace.experts[row], -1))


def test_find_routers_skips_shared_expert_gate():
    model = tiny_model("qwen2_moe")
    routers = find_routers(model)
    assert list(routers) == [0, 1, 2]
    assert all(type(r).__name__.endswith("TopKRouter") for r in routers.values())


def _save_tiny_checkpoint(folder, texts):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    tiny_model("olmoe", seed=7).save_pretrained(folder)
    return fast


TEXTS = ["the expert router picks six experts for every token",
         "hot experts sit on fast gpus so that every gpu finishes together",
         "",
         "workload skew and hardware variability",
         "a power capped gpu is slower in prefill"]


def test_cli_profile_loads_end_to_end(tmp_path, capsys):
    model_dir = tmp_path / "tiny-olmoe"
    tok = _save_tiny_checkpoint(model_dir, TEXTS)
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    out, trace_path = tmp_path / "loads.json", tmp_path / "trace.npz"
    rc = main(["profile", "loads", "--model", str(model_dir), "--dataset", str(data), "--out", str(out),
               "--trace", str(trace_path), "--batch-size", "2", "--max-tokens", "8"])
    assert rc == 0, capsys.readouterr().err
    loads, trace = ExpertLoads.load(out), RoutingTrace.load(trace_path)
    lengths = [min(len(tok(t)["input_ids"]), 8) for t in TEXTS if t]
    assert list(np.diff(trace.seq_offsets)) == lengths
    assert loads.layer_ids == (0, 1, 2) and loads.top_k == 2 and loads.num_experts == 8
    assert np.array_equal(loads.counts, trace.counts())
    assert json.loads(out.read_text())["tokens"] == sum(lengths)


def test_cli_profile_loads_bad_inputs_write_nothing(tmp_path, capsys):
    out = tmp_path / "loads.json"
    data = tmp_path / "data.txt"
    data.write_text("some text\n")
    rc = main(["profile", "loads", "--model", str(tmp_path / "no-such-model"), "--dataset", str(data), "--out", str(out)])
    assert rc == 2 and "no-such-model" in capsys.readouterr().err
    rc = main(["profile", "loads", "--model", str(tmp_path), "--dataset", str(tmp_path / "missing.txt"), "--out", str(out)])
    assert rc == 2 and "missing.txt: no such file" in capsys.readouterr().err
    assert not out.exists()


def test_read_dataset_jsonl_and_errors(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "a b"}\n\n"c d"\n{"text": "e"}\n')
    assert read_dataset(good) == ["a b", "c d", "e"]
    assert read_dataset(good, max_sequences=2) == ["a b", "c d"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": 3}\n')
    with pytest.raises(Exception, match="line 2"):
        read_dataset(bad)
