"""Cross-tokenizer distillation (gold, uld): alignment, float64 references, identities, trainer exactness, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import max_diff, weights
from hypothesis import given
from hypothesis import strategies as st
from xtok_helpers import llama_for, student_tokenizer, teacher_tokenizer, text_dataset

from distill import DistillationConfig, DistillationTrainer
from distill.data.cross_tokenizer import CrossTokenizerCollator, student_text_and_offsets
from distill.losses.cross_tokenizer import (
    VocabMap,
    align_spans,
    build_vocab_map,
    cross_tokenizer_distillation_loss,
    select_rows,
    sorted_l1,
    span_tensors,
)
from distill.losses.logit import distillation_loss
from distill.trainer.tasks import CausalLMCollator


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread avoids OpenMP spin-waiting on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- alignment -----------------------------------------------------------------------------------


def test_align_spans_groups_at_shared_boundaries():
    # "abcdef": student a|bc|def, teacher ab|c|de|f -> spans "abc" and "def".
    student = [(0, 1), (1, 3), (3, 6)]
    teacher = [(0, 2), (2, 3), (3, 5), (5, 6)]
    spans = align_spans(student, teacher)
    assert [(list(s), list(t)) for s, t in spans] == [([0, 1], [0, 1]), ([2], [2, 3])]


def test_align_spans_identical_tokenizations_are_one_token_spans():
    offsets = [(0, 2), (2, 3), (3, 7)]
    assert [(list(s), list(t)) for s, t in align_spans(offsets, offsets)] == [
        ([0], [0]),
        ([1], [1]),
        ([2], [2]),
    ]


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=12), st.lists(st.integers(1, 4), min_size=1, max_size=12)
)
def test_align_spans_partition_both_sides(a, b):
    def offsets(lengths, total):
        out, pos = [], 0
        for n in lengths:
            out.append((pos, min(pos + n, total)))
            pos = min(pos + n, total)
        return out

    total = min(sum(a), sum(b))
    sa, sb = offsets(a, total), offsets(b, total)
    sa, sb = [o for o in sa if o[1] > o[0]], [o for o in sb if o[1] > o[0]]
    spans = align_spans(sa, sb)
    assert [i for s, _ in spans for i in s] == list(range(len(sa)))
    assert [i for _, t in spans for i in t] == list(range(len(sb)))
    for s, t in spans[:-1]:  # every span but a trailing remainder covers the same characters
        assert sa[s.start][0] == sb[t.start][0] and sa[s.stop - 1][1] == sb[t.stop - 1][1]


def test_student_offsets_describe_the_given_tokens():
    tok = student_tokenizer()
    ids = tok("write the café über (x)", add_special_tokens=False)["input_ids"]
    for cut in (ids, ids[1:], ids[3:-1]):  # blocks cut out of a longer tokenization
        text, offsets = student_text_and_offsets(tok, cut)
        assert text == tok.decode(cut, clean_up_tokenization_spaces=False)
        assert offsets[-1][1] == len(text) and all(a <= b for a, b in offsets)


def test_span_tensors_keep_spans_with_a_prediction_and_all_targets():
    # row 0: spans [0] [1,2] [3]; token 3's label is masked. row 1: spans [0,1] [2] against teacher [0] [1,2].
    rows = [
        ([(range(0, 1), range(0, 1)), (range(1, 3), range(1, 2)), (range(3, 4), range(2, 4))],
         [10, 11, 12, 13], [10, 11, 12, -100], [20, 21, 22, 23]),
        ([(range(0, 2), range(0, 1)), (range(2, 3), range(1, 3))], [30, 31, 32], [30, 31, 32], [40, 41, 42]),
    ]  # fmt: skip
    out = span_tensors(rows)
    assert out["xtok_row"].tolist() == [0, 1]
    assert out["xtok_student_pos"].tolist() == [[1, 2], [2, -1]]
    assert out["xtok_student_ids"].tolist() == [[11, 12], [32, 0]]
    assert out["xtok_teacher_pos"].tolist() == [[1, -1], [1, 2]]
    assert out["xtok_teacher_ids"].tolist() == [[21, 0], [41, 42]]
    empty = span_tensors([([(range(0, 2), range(0, 1))], [1, 2], [1, 2], [5])])
    assert empty["xtok_row"].shape == (0,) and empty["xtok_student_pos"].shape == (0, 1)


@given(st.integers(0, 7), st.integers(0, 7), st.integers(0, 10_000))
def test_sorted_l1_matches_full_sort_with_zero_padding(width_p, width_q, seed):
    """The partial selection (topk of the wider side) gives the value and gradient of sorting both in full."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(3, width_p, generator=g, dtype=torch.float64).requires_grad_(True)
    q = torch.randint(0, 4, (3, width_q), generator=g).double() / 4  # with ties
    width = max(width_p, width_q)
    ref_p = p.detach().clone().requires_grad_(True)
    ps = F.pad(ref_p.sort(dim=-1, descending=True).values, (0, width - width_p))
    qs = F.pad(q.sort(dim=-1, descending=True).values, (0, width - width_q))
    ref = (ps - qs).abs().sum(-1)
    out = sorted_l1(p, q)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(sorted_l1(q, p.detach()), ref.detach(), atol=1e-12)  # symmetric
    if width_p:
        (out * torch.arange(1.0, 4.0, dtype=torch.float64)).sum().backward()
        (ref * torch.arange(1.0, 4.0, dtype=torch.float64)).sum().backward()
        assert torch.allclose(p.grad, ref_p.grad)


def test_vocab_map_takes_consecutive_ids_as_a_view_and_others_by_index():
    ids = torch.tensor([2, 3, 4])
    m = VocabMap(ids, torch.tensor([4, 0, 2]), torch.tensor([0, 1, 5]), torch.tensor([], dtype=torch.long))
    x = torch.arange(12.0).reshape(2, 6)
    assert m.column_slices["matched_teacher"] == slice(2, 5) and m.column_slices["matched_student"] is None
    for field in ("matched_teacher", "matched_student", "unmatched_teacher", "unmatched_student"):
        assert torch.equal(m.take(x, field), x[:, getattr(m, field)])
    assert m.take(x, "matched_teacher").data_ptr() == x[:, 2:].data_ptr()  # a view


# ---- float64 references --------------------------------------------------------------------------


def _batch(n=6, seed=1):
    s_tok, t_tok = student_tokenizer(), teacher_tokenizer()
    data = text_dataset(s_tok, n, seed=seed)
    collator = CrossTokenizerCollator(CausalLMCollator(s_tok.pad_token_id), s_tok, t_tok)
    return collator([data[i] for i in range(n)]), s_tok, t_tok


def _reference(s_logits, t_logits, batch, s_tok, t_tok, kind, alpha, temperature):
    """Span by span in float64 from the raw tokens, offsets and vocabularies (no batch tensors)."""
    s_logits, t_logits = s_logits.double(), t_logits.double()
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    pairs = [(t_vocab[w], s_vocab[w]) for w in t_vocab.keys() & s_vocab.keys()]
    un_t = sorted(set(range(len(t_tok))) - {p[0] for p in pairs})
    un_s = sorted(set(range(len(s_tok))) - {p[1] for p in pairs})

    def sorted_l1(p, q):
        width = max(len(p), len(q))
        p = F.pad(torch.sort(p, descending=True).values, (0, width - len(p)))
        q = F.pad(torch.sort(q, descending=True).values, (0, width - len(q)))
        return (p - q).abs().sum()

    kd, n_valid = 0.0, 0
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        ids, labels = batch["input_ids"][r, :n].tolist(), batch["labels"][r, :n].tolist()
        t_ids = batch["teacher_input_ids"][r][batch["teacher_attention_mask"][r].bool()].tolist()
        _, s_off = student_text_and_offsets(s_tok, ids)
        text = s_tok.decode(ids, clean_up_tokenization_spaces=False)
        t_off = t_tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        n_valid += sum(label != -100 for label in labels[1:])
        for s_span, t_span in align_spans(s_off, t_off):
            if s_span.start == 0 or t_span.start == 0 or any(labels[j] == -100 for j in s_span):
                continue

            def merged(logits, span, toks, vocab_size, r=r):
                lp = [F.log_softmax(logits[r, j - 1, :vocab_size] / temperature, -1) for j in span]
                return lp[0] + sum(lp[i][toks[j]] for i, j in enumerate(span) if i > 0)

            ls, lt = merged(s_logits, s_span, ids, len(s_tok)), merged(t_logits, t_span, t_ids, len(t_tok))
            if kind == "uld":
                kd = kd + sorted_l1(ls.exp(), lt.exp())
            else:
                ti, si = [p[0] for p in pairs], [p[1] for p in pairs]
                p, q = lt[ti].exp(), ls[si].exp()
                kd = kd + (p * (lt[ti] - ls[si]) - p + q).sum() + sorted_l1(ls[un_s].exp(), lt[un_t].exp())
    shifted = batch["labels"][:, 1:]
    ce = F.cross_entropy(
        s_logits[:, :-1, : len(s_tok)].reshape(-1, len(s_tok)), shifted.reshape(-1), reduction="sum"
    )
    kd = temperature**2 * kd / n_valid
    return alpha * kd + (1 - alpha) * ce / n_valid, kd


@pytest.mark.parametrize("kind", ["gold", "uld"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_and_gradient_match_float64_reference(kind, temperature):
    batch, s_tok, t_tok = _batch()
    torch.manual_seed(0)
    B, Ts, Tt = batch["input_ids"].shape[0], batch["input_ids"].shape[1], batch["teacher_input_ids"].shape[1]
    s_logits = (3 * torch.randn(B, Ts, len(s_tok) + 4)).requires_grad_(True)  # 4 padding rows of the head
    t_logits = 3 * torch.randn(B, Tt, len(t_tok))
    spans = {k: v for k, v in batch.items() if k.startswith("xtok_")}
    out = cross_tokenizer_distillation_loss(
        s_logits,
        t_logits,
        spans,
        batch["labels"],
        kind=kind,
        alpha=0.5,
        temperature=temperature,
        vocab_map=build_vocab_map(s_tok, t_tok),
        student_vocab_size=len(s_tok),
        teacher_vocab_size=len(t_tok),
    )
    out.loss.backward()
    ref_s = s_logits.detach().double().requires_grad_(True)
    ref_loss, ref_kd = _reference(ref_s, t_logits, batch, s_tok, t_tok, kind, 0.5, temperature)
    ref_loss.backward()
    assert spans["xtok_row"].numel() > 10 and (spans["xtok_student_pos"][:, 1] >= 0).any()
    assert out.kd_loss.item() == pytest.approx(ref_kd.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.allclose(s_logits.grad.double(), ref_s.grad, atol=1e-6, rtol=1e-4)
    assert s_logits.grad[..., len(s_tok) :].abs().max() == 0  # padding rows of the head get no gradient


def test_gold_with_identical_tokenizers_is_forward_kl():
    tok = student_tokenizer()
    data = text_dataset(tok, 8, seed=3)
    batch = CrossTokenizerCollator(CausalLMCollator(tok.pad_token_id), tok, tok)([data[i] for i in range(8)])
    assert torch.equal(
        batch["teacher_input_ids"], batch["input_ids"][:, : batch["teacher_input_ids"].shape[1]]
    )
    assert (batch["xtok_student_pos"].shape[1], batch["xtok_teacher_pos"].shape[1]) == (1, 1)
    torch.manual_seed(1)
    B, T = batch["input_ids"].shape
    s_logits, t_logits = 2 * torch.randn(B, T, len(tok)), 2 * torch.randn(B, T, len(tok))
    spans = {k: v for k, v in batch.items() if k.startswith("xtok_")}
    gold = cross_tokenizer_distillation_loss(
        s_logits, t_logits, spans, batch["labels"], kind="gold", alpha=0.3, temperature=2.0,
        vocab_map=build_vocab_map(tok, tok),
    )  # fmt: skip
    kl = distillation_loss(
        s_logits[:, :-1],
        t_logits[:, :-1],
        batch["labels"][:, 1:],
        alpha=0.3,
        temperature=2.0,
        kind="forward_kl",
    )
    assert gold.kd_loss.item() == pytest.approx(kl.kd_loss.item(), abs=1e-5)
    assert gold.loss.item() == pytest.approx(kl.loss.item(), abs=1e-5)
    assert int(gold.num_valid) == int(kl.num_valid)


def test_masked_text_carries_no_loss_on_either_side():
    batch, s_tok, t_tok = _batch()
    torch.manual_seed(2)
    B, Ts, Tt = batch["input_ids"].shape[0], batch["input_ids"].shape[1], batch["teacher_input_ids"].shape[1]
    s_logits, t_logits = torch.randn(B, Ts, len(s_tok)), torch.randn(B, Tt, len(t_tok))
    spans = {k: v for k, v in batch.items() if k.startswith("xtok_")}
    masked = batch["labels"] == -100

    def kd(s, t):
        return cross_tokenizer_distillation_loss(
            s, t, spans, batch["labels"], kind="uld", alpha=1.0, temperature=1.0
        ).kd_loss

    base = kd(s_logits, t_logits)
    # Logits that only predict masked student tokens, and teacher logits that only predict teacher tokens
    # inside masked text, change nothing.
    s_changed = s_logits.clone()
    s_changed[:, :-1][masked[:, 1:]] += 5 * torch.randn_like(s_changed[:, :-1][masked[:, 1:]])
    t_changed = t_logits.clone()
    used = torch.zeros(B, Tt, dtype=torch.bool)
    pos = spans["xtok_teacher_pos"]
    for g in range(pos.shape[0]):
        for p in pos[g][pos[g] >= 0].tolist():
            used[spans["xtok_row"][g], p - 1] = True
    t_changed[~used] += 5
    t_changed[~used] *= -2
    assert kd(s_changed, t_changed).item() == pytest.approx(base.item(), abs=1e-6)
    assert select_rows(spans, 2)["xtok_row"].max() < 2


# ---- trainer --------------------------------------------------------------------------------------


def make_trainer(tmp_path, student, teacher, dataset, teacher_tok, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        cross_tokenizer_loss="gold",
    )
    kwargs.update(overrides)
    s_tok = student_tokenizer()
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        teacher_processing_class=teacher_tok,
        args=DistillationConfig(**kwargs),
        train_dataset=dataset,
        processing_class=s_tok,
        data_collator=CausalLMCollator(pad_token_id=s_tok.pad_token_id),
    )


@pytest.mark.parametrize("kind", ["gold", "uld"])
def test_gradient_accumulation_is_exact(tmp_path, kind):
    s_tok, t_tok = student_tokenizer(), teacher_tokenizer()
    data = text_dataset(s_tok, 24)
    teacher = llama_for(t_tok, hidden=48, seed=1)
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = llama_for(s_tok, seed=0)
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}", student, teacher, data, t_tok,
            per_device_train_batch_size=bs, gradient_accumulation_steps=ga, cross_tokenizer_loss=kind,
        )  # fmt: skip
        trainer.train()
        results.append((weights(student), [h for h in trainer.state.log_history if "loss" in h]))
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    for a, b in zip(results[0][1], results[1][1]):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
        assert a["kd_loss"] > 0


def test_evaluation_reports_cross_tokenizer_kd(tmp_path):
    s_tok, t_tok = student_tokenizer(), teacher_tokenizer()
    student, teacher = llama_for(s_tok), llama_for(t_tok, hidden=48, seed=1)
    eval_data = text_dataset(s_tok, 7, seed=9)
    trainer = make_trainer(
        tmp_path, student, teacher, text_dataset(s_tok, 8), t_tok, per_device_eval_batch_size=3
    )
    metrics = trainer.evaluate(eval_dataset=eval_data)
    batch = trainer.data_collator([eval_data[i] for i in range(7)])
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).logits
    _, ref_kd = _reference(s_logits, t_logits, batch, s_tok, t_tok, "gold", 1.0, 2.0)
    assert metrics["eval_kd_loss"] == pytest.approx(ref_kd.item(), rel=1e-4)
    assert "eval_teacher_loss" not in metrics and metrics["eval_loss"] > 0


def test_different_tokenizers_without_the_field_are_refused_naming_it(tmp_path):
    s_tok, t_tok = student_tokenizer(), teacher_tokenizer()
    with pytest.raises(ValueError, match="cross_tokenizer_loss"):
        make_trainer(
            tmp_path, llama_for(s_tok), llama_for(t_tok, seed=1), text_dataset(s_tok, 4), t_tok,
            cross_tokenizer_loss=None,
        )  # fmt: skip


def test_tokenizer_without_offsets_is_refused(tmp_path):
    from transformers import PreTrainedTokenizer

    class CharTokenizer(PreTrainedTokenizer):  # a pure-Python ("slow") tokenizer: no offset mapping
        def __init__(self, **kwargs):
            self.vocab = {chr(i): i - 32 for i in range(32, 127)}
            super().__init__(**kwargs)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def get_vocab(self):
            return dict(self.vocab)

        def _tokenize(self, text):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return chr(index + 32)

    slow = CharTokenizer()
    assert not slow.is_fast
    s_tok = student_tokenizer()
    with pytest.raises(ValueError, match="slow tokenizer without character offsets"):
        make_trainer(tmp_path, llama_for(s_tok), llama_for(s_tok, seed=1), text_dataset(s_tok, 4), slow)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cross_tokenizer_loss": "sinkhorn"}, "cross_tokenizer_loss='sinkhorn' is unknown"),
        (
            {"cross_tokenizer_loss": None, "teacher_tokenizer_name_or_path": "x"},
            "only used by cross_tokenizer_loss",
        ),
        ({"kd_kind": "jsd"}, "kd_kind='jsd' does not apply"),
        ({"kd_fused_lm_head": True, "ddp_find_unused_parameters": False}, "kd_fused_lm_head"),
        ({"lmbda": 0.5}, "lmbda"),
        ({"alpha": 0.0}, "alpha > 0"),
        ({"task": "seq-cls"}, "causal-lm only"),
    ],
)
def test_config_refuses_what_does_not_combine(tmp_path, overrides, message):
    kwargs = dict(output_dir=str(tmp_path), report_to="none", cross_tokenizer_loss="gold")
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gold"])  # uld differs only in the per-span divergence (GA test above)
def test_ddp_two_processes_match_one(tmp_path, kind):
    """8 rows on one process and 2 processes x 4 rows (gloo DDP) give the same update and logs."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    here = os.path.dirname(__file__)
    script = os.path.join(here, "ddp_train_script.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(here))
    extra = json.dumps({"cross_tokenizer_loss": kind})
    single, double = str(tmp_path / "single"), str(tmp_path / "double")
    subprocess.run([sys.executable, script, single, "8", extra], check=True, env=env, timeout=300)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    port = "29541" if kind == "gold" else "29542"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", port, script, double, "4", extra]
    subprocess.run(cmd, check=True, env=env, timeout=300)
    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (single, double))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    def losses(out):
        with open(os.path.join(out, "trainer_state.json")) as f:
            return [h for h in json.load(f)["log_history"] if "loss" in h]

    for x, y in zip(losses(single), losses(double)):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-4), key
