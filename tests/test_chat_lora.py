"""Chat data with assistant-only loss (distill.data.chat) and LoRA students with self-distillation
(distill.students.lora): masking, merged saving, exact accumulation, exact resume, one model in memory."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import max_diff

from distill.data.chat import ZEPHYR_TEMPLATE, encode_chat, render_chat, token_mask
from distill.train import main as train_main

CHAT = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What does json dumps do?"},
    {"role": "assistant", "content": "It turns a Python object into a JSON string."},
    {"role": "user", "content": "Which module defines it?"},
    {"role": "assistant", "content": "The json module."},
]
WORDS = "the a of to and it is in for string object module list file python json path read write data".split()


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        turn = [
            {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "?"},
            {
                "role": "assistant",
                "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + ".",
            },
        ]
        out.append(
            ([{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []) + turn + turn[:2] * (i % 2)
        )
    return out


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    paths = {}
    for split, n, seed in (("train", 48, 0), ("validation", 8, 1)):
        paths[split] = str(root / f"{split}.jsonl")
        with open(paths[split], "w") as f:
            for messages in conversations(n, seed):
                f.write(json.dumps({"messages": messages}) + "\n")
    return paths


@pytest.fixture(scope="module")
def bpe():
    from distill.data.corpus import train_bpe_tokenizer

    texts = [m["content"] for c in conversations(64) for m in c] + [m["content"] for m in CHAT]
    return train_bpe_tokenizer(texts * 4, vocab_size=300)


@pytest.fixture
def tokenizer(bpe):
    """The BPE tokenizer, a fresh copy per test (tests set templates on it)."""
    import copy

    return copy.deepcopy(bpe)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, bpe):
    """A pretrained tiny Llama with a tokenizer that has no chat template (like a BPE from `distill train`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bpe
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    path = str(tmp_path_factory.mktemp("base"))
    LlamaForCausalLM(config).save_pretrained(path)
    bpe.save_pretrained(path)
    return path


def chat_args(chat_files, out, *extra):
    return [
        "--task",
        "causal-lm",
        "--dataset_name",
        "json",
        "--data_files",
        json.dumps({"train": chat_files["train"], "validation": chat_files["validation"]}),
        "--assistant_only_loss",
        "true",
        "--chat_template_path",
        "builtin:zephyr",
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.05",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8"]


# ---- chat rendering and masks ---------------------------------------------------------------------


def test_render_finds_each_assistant_turn(tokenizer):
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    rendering = render_chat(CHAT, tokenizer)
    assert rendering.text == tokenizer.apply_chat_template(CHAT, tokenize=False)
    eos = tokenizer.eos_token
    assert [rendering.text[a:b] for a, b in rendering.assistant_spans] == [
        CHAT[2]["content"] + eos,
        CHAT[4]["content"] + eos,
    ]


def test_assistant_only_labels_cover_the_replies_and_nothing_else(tokenizer):
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    ids, labels = encode_chat(CHAT, tokenizer, assistant_only_loss=True)
    assert (
        ids
        == tokenizer(tokenizer.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False)[
            "input_ids"
        ]
    )
    kept = [t for t in labels if t != -100]
    eos = tokenizer.eos_token
    assert tokenizer.decode(kept) == CHAT[2]["content"] + eos + CHAT[4]["content"] + eos
    assert sum(t == -100 for t in labels) > len(kept) // 2  # system, user and template tokens
    _, all_labels = encode_chat(CHAT, tokenizer, assistant_only_loss=False)
    assert all_labels == ids


def test_token_mask_uses_token_starts():
    spans = ((5, 10), (20, 25))
    offsets = [(0, 5), (5, 7), (7, 10), (10, 12), (19, 21), (21, 25), (25, 25)]
    assert token_mask(offsets, spans) == [False, True, True, False, False, True, False]


def test_template_that_rewrites_history_is_refused(tokenizer):
    # Shows only the last message: a shorter conversation is not a prefix of the longer one.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="concatenation of its turns"):
        render_chat(CHAT, tokenizer)


def test_tokenizer_without_template_is_a_clear_error(chat_files, base_dir, tmp_path):
    args = chat_args(
        chat_files, tmp_path, "--model_name_or_path", base_dir, "--alpha", "0", "--max_steps", "1"
    )
    i = args.index("--chat_template_path")
    del args[i : i + 2]
    with pytest.raises(ValueError, match="no chat template: set chat_template_path"):
        train_main(args)


def test_assistant_only_loss_needs_conversations(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"plain text number {i}"}) for i in range(8)))
    with pytest.raises(ValueError, match="assistant_only_loss: true needs conversational data"):
        train_main(
            [
                "--task",
                "causal-lm",
                "--data_files",
                str(path),
                "--assistant_only_loss",
                "true",
                "--model_config",
                '{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, '
                '"num_attention_heads": 2, "num_key_value_heads": 2}',
                "--tokenizer_vocab_size",
                "300",
                "--alpha",
                "0",
                "--output_dir",
                str(tmp_path / "out"),
                "--report_to",
                "none",
            ]
        )


@pytest.mark.parametrize("assistant_only", [True, False])
def test_masked_positions_carry_no_loss(chat_files, base_dir, assistant_only, tmp_path):
    """CE and KD together: the loss's gradient is exactly zero at every logit that predicts a non-assistant token.
    With assistant_only_loss off the same positions do carry loss (so the check can fail)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill import DistillationConfig, DistillationTrainer
    from distill.data import DataArguments, build_datasets
    from distill.trainer.tasks import CausalLMCollator

    tok = AutoTokenizer.from_pretrained(base_dir)
    data_args = DataArguments(
        dataset_name="json",
        data_files={"train": chat_files["train"]},
        assistant_only_loss=assistant_only,
        chat_template_path="builtin:zephyr",
        eval_split="",
    )
    data = build_datasets(data_args, "causal-lm", tok).train
    student = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(3)
    teacher = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    args = DistillationConfig(output_dir=str(tmp_path), alpha=0.5, report_to="none", use_cpu=True)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    )
    batch = CausalLMCollator(tok.pad_token_id)([data[i] for i in range(6)])
    captured = {}

    def keep_logits(module, inputs, output):
        output.retain_grad()
        captured["logits"] = output

    student.lm_head.register_forward_hook(keep_logits)
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    grad = captured["logits"].grad[:, :-1].abs().sum(-1)  # logits at t predict the label at t + 1
    target = batch["labels"][:, 1:] != -100
    real = batch["attention_mask"][:, 1:].bool()
    user_side = real & ~target
    assert target.any() and float(loss) > 0
    assert (grad[target] > 0).all()
    if assistant_only:
        assert user_side.sum() > target.sum() // 2  # system, user and template tokens are masked
        assert float(grad[~target].max()) == 0.0
    else:
        assert not user_side.any()  # every real token is a target: nothing masked


# ---- LoRA students ----------------------------------------------------------------------------------


def test_lora_self_distillation_saves_merged_model_and_adapter(chat_files, base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    args = chat_args(
        chat_files, out, "--model_name_or_path", base_dir, "--teacher_model_name_or_path", "self"
    )
    results = train_main(args + LORA + ["--max_steps", "3", "--alpha", "0.5", "--save_strategy", "no"])
    assert results["teacher_params"] == results["student_params"]  # the base: adapters are not counted
    assert results["eval_kd_loss"] > 0 and "eval_teacher_loss" in results
    names = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "adapter"} <= names
    assert "adapter_config.json" not in names  # else transformers would load the folder as an adapter
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(out / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in merged.state_dict())
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        merged_logits, adapter_logits = merged(ids).logits, with_adapter.eval()(ids).logits
        base_logits = base(ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-4  # the adapters trained and were merged
    # The saved tokenizer carries the chat template (what `scaledown serve` renders chat requests with), and a
    # served chat prompt is tokenized exactly as training tokenized the conversation up to the reply.
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == ZEPHYR_TEMPLATE
    from deploy.predictor import Predictor

    predictor = Predictor(str(out))
    prompt = predictor.chat_prompt(CHAT[:2])
    served = predictor.encode_prompt(prompt, 4, special_tokens=False)[0].tolist()
    trained, labels = encode_chat(CHAT[:3], tok, assistant_only_loss=True)
    first_target = next(i for i, t in enumerate(labels) if t != -100)
    assert served == trained[:first_target]


def test_self_teacher_is_the_base_model_without_a_copy(base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from distill import DistillationConfig, DistillationTrainer

    student = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # make the adapters non-zero, so that the student differs from its base
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    args = DistillationConfig(
        output_dir=str(tmp_path), alpha=0.5, report_to="none", teacher_model_name_or_path="self"
    )
    trainer = DistillationTrainer(model=student, teacher_model="self", args=args)
    student_storage = {p.data_ptr() for p in student.parameters()}
    assert {p.data_ptr() for p in trainer.teacher.parameters()} <= student_storage
    ids = torch.randint(3, 200, (2, 10))
    student.train()
    t_logits = trainer.teacher(input_ids=ids).logits
    assert student.training and not t_logits.requires_grad
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
        s_logits = student.eval()(input_ids=ids).logits
    assert torch.equal(t_logits, base_logits)
    assert (s_logits - base_logits).abs().max() > 1e-3


@pytest.mark.parametrize(
    "extra, match",
    [
        ([], "needs use_peft: true"),
        (LORA + ["--kd_fused_lm_head", "true"], "does not work with kd_fused_lm_head"),
    ],
)
def test_self_teacher_refusals(chat_files, base_dir, tmp_path, extra, match):
    args = chat_args(
        chat_files, tmp_path, "--model_name_or_path", base_dir, "--teacher_model_name_or_path", "self"
    )
    with pytest.raises(ValueError, match=match):
        train_main(args + extra + ["--ddp_find_unused_parameters", "false"])


def test_lora_gradient_accumulation_is_exact(base_dir, tmp_path):
    """1 x 8 and 4 x 2 micro-batches give the same LoRA update under self-distillation."""
    from helpers import lm_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from distill import DistillationConfig, DistillationTrainer
    from distill.trainer.tasks import CausalLMCollator

    data = lm_dataset(16, vocab=200)
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        torch.manual_seed(0)
        student = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir),
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"),
        )
        args = DistillationConfig(
            output_dir=str(tmp_path / f"{bs}x{ga}"),
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=2,
            learning_rate=0.5,
            optim="sgd",
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            alpha=0.5,
            teacher_model_name_or_path="self",
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model="self",
            args=args,
            train_dataset=data,
            data_collator=CausalLMCollator(0),
        )
        trainer.train()
        lora = {k: v.detach().clone() for k, v in student.state_dict().items() if "lora_" in k}
        results.append((lora, [h for h in trainer.state.log_history if "loss" in h]))
    assert max(v.abs().max().item() for k, v in results[0][0].items() if "lora_B" in k) > 0  # it trained
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    for a, b in zip(results[0][1], results[1][1]):
        assert a["kd_loss"] == pytest.approx(b["kd_loss"], abs=1e-5)
        assert a["ce_loss"] == pytest.approx(b["ce_loss"], abs=1e-5)


def test_lora_resume_restores_the_adapter_exactly(chat_files, base_dir, tmp_path):
    from safetensors.torch import load_file

    common = LORA + ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_split", ""]
    straight = tmp_path / "straight"
    base = chat_args(
        chat_files, straight, "--model_name_or_path", base_dir, "--teacher_model_name_or_path", "self"
    )
    train_main(base + common)
    resumed = tmp_path / "resumed"
    args = chat_args(
        chat_files, resumed, "--model_name_or_path", base_dir, "--teacher_model_name_or_path", "self"
    )
    train_main(args + common + ["--resume_from_checkpoint", str(straight / "checkpoint-2")])
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    assert max_diff(a, b) == 0.0
    with open(straight / "trainer_state.json") as f, open(resumed / "trainer_state.json") as g:
        losses = [[h["loss"] for h in json.load(x)["log_history"] if "loss" in h] for x in (f, g)]
    assert losses[0][2:] == losses[1][-2:]


def test_cross_tokenizer_teacher_view_is_masked_too(chat_files, bpe, base_dir):
    """Under cross_tokenizer_loss the teacher's tokens of the same text carry a loss only where the student's
    assistant tokens do: every aligned span lies inside an assistant turn."""
    from transformers import AutoTokenizer

    from distill.data import DataArguments, build_datasets
    from distill.data.corpus import train_bpe_tokenizer
    from distill.data.cross_tokenizer import CrossTokenizerCollator
    from distill.trainer.tasks import CausalLMCollator

    student_tok = AutoTokenizer.from_pretrained(base_dir)
    teacher_tok = train_bpe_tokenizer(
        [m["content"] for c in conversations(40, seed=7) for m in c], vocab_size=280
    )
    data_args = DataArguments(
        dataset_name="json",
        data_files={"train": chat_files["train"]},
        assistant_only_loss=True,
        chat_template_path="builtin:zephyr",
        eval_split="",
    )
    data = build_datasets(data_args, "causal-lm", student_tok).train
    collate = CrossTokenizerCollator(CausalLMCollator(student_tok.pad_token_id), student_tok, teacher_tok)
    batch = collate([data[i] for i in range(8)])
    assert batch["xtok_row"].numel() > 0
    eos = student_tok.eos_token
    for g, row in enumerate(batch["xtok_row"].tolist()):
        positions = [p for p in batch["xtok_student_pos"][g].tolist() if p >= 0]
        assert all(batch["labels"][row, p] != -100 for p in positions)
        t_pos = [p for p in batch["xtok_teacher_pos"][g].tolist() if p >= 0]
        text = teacher_tok.decode(batch["teacher_input_ids"][row, t_pos].tolist())
        replies = [m["content"] + eos for m in conversations(48)[row] if m["role"] == "assistant"]
        assert any(text.strip() in reply for reply in replies), text
