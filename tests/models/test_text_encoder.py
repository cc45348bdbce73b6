"""TextEncoder: offline MiniLM default and local CLIP folders, per-token + pooled output, caching, blending."""

from __future__ import annotations

import contextlib
import socket
import string

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError, UnsafeModelFileError
from expdiff_core.facs import unit
from expdiff_core.models.text_encoder import MINILM_NAME, TextEncoder, minilm_folder

LEFT, RIGHT, JAW = (unit(name).prompt for name in ("mouthSmile_L", "mouthSmile_R", "jawOpen"))


class _NoNetwork:
    """Make any socket connection fail while active: loading must not need the network."""

    def __enter__(self):
        self._connect = socket.socket.connect

        def refuse(sock, address):
            raise AssertionError(f"network access attempted: {address}")

        socket.socket.connect = refuse
        return self

    def __exit__(self, *exc):
        socket.socket.connect = self._connect


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    with _NoNetwork():
        return TextEncoder.from_pretrained(device="cpu")


@contextlib.contextmanager
def forward_calls(encoder: TextEncoder):
    """Yield a list whose length is the number of model forward passes run inside the block."""
    calls: list[int] = []
    handle = encoder.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_the_offline_default_is_minilm_from_the_wheel(encoder):
    assert minilm_folder() is not None and (minilm_folder() / "model.safetensors").is_file()
    assert encoder.name == MINILM_NAME and encoder.kind == "sentence"
    assert encoder.hidden_size == 384 and encoder.max_length == 32


def test_encode_returns_tokens_mask_and_pooled(encoder):
    emb = encoder.encode([LEFT, JAW])
    assert emb.tokens.shape == (2, 32, 384) and emb.tokens.dtype == torch.float32
    assert emb.mask.shape == (2, 32) and emb.mask.dtype == torch.bool
    assert emb.pooled.shape == (2, 384) and emb.pooled.dtype == torch.float32
    real_tokens = [len(ids) for ids in encoder.tokenizer([LEFT, JAW])["input_ids"]]
    assert emb.mask.sum(1).tolist() == real_tokens
    assert torch.all(emb.tokens[~emb.mask] == 0)
    # all-MiniLM-L6-v2's sentence-transformers pipeline ends in Normalize: unit pooled vectors (fp32 rounding)
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_pooled_is_the_mean_of_the_real_tokens_normalised(encoder):
    emb = encoder.encode(JAW)
    mean = emb.tokens[0][emb.mask[0]].mean(0)
    # 1e-6: the same float32 sums in a different order
    assert torch.allclose(emb.pooled[0], mean / mean.norm(), atol=1e-6)


def test_each_prompt_is_computed_once(encoder):
    encoder.clear_cache()
    with forward_calls(encoder) as calls:
        first = encoder.encode([LEFT, LEFT, RIGHT])
        again = encoder.encode([RIGHT, LEFT])
    assert len(calls) == 1
    assert torch.equal(first.tokens[0], first.tokens[1])
    assert torch.equal(again.tokens[0], first.tokens[2]) and torch.equal(again.pooled[1], first.pooled[0])


def test_on_disk_cache_serves_a_fresh_encoder_without_running_the_model(encoder, tmp_path):
    encoder.cache_dir = tmp_path
    try:
        encoder.clear_cache()
        computed = encoder.encode([JAW])
        files = list(tmp_path.glob("*/*.safetensors"))
        assert len(files) == 1 and files[0].parent.name == encoder.model_key
        encoder.clear_cache()
        with forward_calls(encoder) as calls:
            cached = encoder.encode([JAW])
        assert not calls
        assert torch.equal(cached.tokens, computed.tokens) and torch.equal(cached.mask, computed.mask)
        assert torch.equal(cached.pooled, computed.pooled)
        files[0].write_bytes(b"truncated")  # a damaged cache file is recomputed, not trusted
        encoder.clear_cache()
        assert torch.equal(encoder.encode([JAW]).pooled, computed.pooled)
    finally:
        encoder.cache_dir = None
        encoder.clear_cache()


def test_interpolation_endpoints_are_the_two_prompts(encoder):
    a, b = encoder.encode([LEFT]), encoder.encode([JAW])
    blend = encoder.interpolate(LEFT, JAW, [0.0, 0.5, 1.0])
    assert len(blend) == 3
    for i, end in ((0, a), (2, b)):
        assert torch.equal(blend.tokens[i], end.tokens[0])
        assert torch.equal(blend.mask[i], end.mask[0])
        assert torch.equal(blend.pooled[i], end.pooled[0])
    # 1e-6: one float32 multiply-add per element
    assert torch.allclose(blend.pooled[1], (a.pooled[0] + b.pooled[0]) / 2, atol=1e-6)
    assert torch.equal(blend.mask[1], a.mask[0] | b.mask[0])
    single = encoder.interpolate(LEFT, JAW, 0.25)
    assert single.tokens.shape == (1, 32, 384)


def test_left_and_right_smiles_are_closer_to_each_other_than_to_jaw_open(encoder):
    emb = encoder.encode([LEFT, RIGHT, JAW])
    cos = torch.nn.functional.cosine_similarity
    left_right = cos(emb.pooled[0], emb.pooled[1], dim=0).item()
    left_jaw = cos(emb.pooled[0], emb.pooled[2], dim=0).item()
    print(f"\npooled cosine  mouthSmile_L vs mouthSmile_R: {left_right:.4f}   vs jawOpen: {left_jaw:.4f}")
    assert left_right > left_jaw


def test_the_word_that_differs_keeps_a_distinct_token_embedding(encoder):
    emb = encoder.encode([LEFT, RIGHT])
    ids = encoder.tokenizer([LEFT, RIGHT], padding="max_length", max_length=32)["input_ids"]
    tokens = encoder.tokenizer.convert_ids_to_tokens(ids[0])
    per_token = torch.nn.functional.cosine_similarity(emb.tokens[0], emb.tokens[1], dim=-1)
    differs = torch.tensor([x != y for x, y in zip(*ids)]) & emb.mask[0]
    same = ~differs & emb.mask[0]
    print("\nper-token cosine mouthSmile_L vs mouthSmile_R:")
    for i in torch.nonzero(emb.mask[0]).flatten().tolist():
        print(f"  {tokens[i]:>10} / {encoder.tokenizer.convert_ids_to_tokens(ids[1][i]):<10} {per_token[i]:.4f}")
    assert differs.any()
    assert per_token[differs].max() < per_token[same].min()


def test_long_prompts_are_truncated_with_a_warning(encoder):
    long = " ".join(["smile"] * 40)
    with pytest.warns(UserWarning, match="keeps the first 32"):
        emb = encoder.encode([long])
    assert emb.mask.sum() == 32


def test_bad_prompts_and_weights_are_refused(encoder):
    with pytest.raises(ExpDiffInputError, match="at least one prompt"):
        encoder.encode([])
    with pytest.raises(ExpDiffInputError, match="must be strings"):
        encoder.encode([3])
    with pytest.raises(ExpDiffInputError, match="finite"):
        encoder.interpolate(LEFT, JAW, float("nan"))


# ---------------------------------------------------------------- CLIP (production kind), built locally
def _tiny_clip(folder, seed: int = 0):
    """A 2-layer CLIP text model with a letters-only BPE vocabulary, saved as a local folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    model = CLIPTextModel(config)
    model.save_pretrained(folder)
    return model


def test_a_local_clip_folder_gives_77_tokens_and_the_pooler_output(tmp_path):
    model = _tiny_clip(tmp_path / "clip")
    with _NoNetwork():
        clip = TextEncoder.from_pretrained(tmp_path / "clip", device="cpu")
    assert clip.kind == "clip" and clip.max_length == 77 and clip.hidden_size == 32
    emb = clip.encode(["smile left", "open jaw"])
    assert emb.tokens.shape == (2, 77, 32) and emb.mask.sum(1).tolist() == [11, 9]  # letters + start/end
    batch = clip.tokenizer(["smile left"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        pooler = model.eval()(**batch).pooler_output[0]
    # 1e-5: same weights and inputs, separately batched float32 attention
    assert torch.allclose(emb.pooled[0], pooler, atol=1e-5)


def test_a_stable_diffusion_pipeline_folder_is_understood(tmp_path):
    _tiny_clip(tmp_path / "sd" / "text_encoder")
    (tmp_path / "sd" / "text_encoder" / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    (tmp_path / "sd" / "tokenizer").mkdir()
    for name in ("tokenizer.json", "sd/text_encoder/tokenizer_config.json"):
        (tmp_path / name).rename(tmp_path / "sd" / "tokenizer" / name.split("/")[-1])
    clip = TextEncoder.from_pretrained(tmp_path / "sd", device="cpu")
    assert clip.kind == "clip" and clip.encode("smile").tokens.shape == (1, 77, 32)


def test_a_text_encoder_folder_with_only_a_pickle_is_refused(tmp_path):
    model = _tiny_clip(tmp_path / "clip")
    (tmp_path / "clip" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "clip" / "pytorch_model.bin")
    with pytest.raises(UnsafeModelFileError, match=r"pytorch_model\.bin.*safetensors only"):
        TextEncoder.from_pretrained(tmp_path / "clip", device="cpu")


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ExpDiffInputError, match="not found"):
        TextEncoder.from_pretrained(tmp_path / "nowhere", device="cpu")
