"""`DistillationConfig`: `TrainingArguments` plus the knobs of knowledge distillation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from transformers import TrainingArguments

from .data.arguments import TASKS  # one list of tasks, shared with the data layer
from .losses.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from .losses.divergences import KD_KINDS, check_loss_settings
from .losses.hidden import HIDDEN_LOSSES, parse_layer_map

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _no_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()


@dataclass
class DistillationConfig(TrainingArguments):
    r"""Training arguments for [`DistillationTrainer`].

    The loss is ``alpha * T^2 * D(teacher || student) + (1 - alpha) * CE(student, labels)``, where
    ``D`` is chosen by `kd_kind`. Every other field is a regular
    [`~transformers.TrainingArguments`] field and behaves exactly as in `transformers.Trainer`.

    Args:
        alpha (`float`, defaults to 0.5):
            Weight of the distillation term, in [0, 1]. 0 trains on labels alone (no teacher needed);
            1 trains on the teacher alone.
        temperature (`float`, defaults to 2.0):
            Softmax temperature of the distillation term, > 0. The term is multiplied by T^2 so that
            its gradient scale does not depend on T. The cross-entropy term always uses T = 1.
        kd_kind (`str`, defaults to `"forward_kl"`):
            `forward_kl` (KL(teacher || student), mode-covering), `reverse_kl` (KL(student || teacher),
            mode-seeking), `jsd` (generalised Jensen-Shannon with mixture weight `jsd_beta`),
            `skew_forward_kl` (KL(p || a p + (1 - a) q), p teacher, q student, a = `skew_alpha`) or
            `skew_reverse_kl` (KL(q || a q + (1 - a) p)), the skew KLs of DistiLLM (Ko et al. 2024).
        jsd_beta (`float`, defaults to 0.5):
            Teacher weight of the JSD mixture, strictly between 0 and 1.
        skew_alpha (`float`, defaults to 0.1):
            The skew a of `skew_forward_kl` / `skew_reverse_kl`, in [0, 1); 0 gives the plain KL.
        teacher_model_name_or_path (`str`, *optional*):
            Hub id or local directory of the teacher. Loaded from safetensors only. `self`: self-distillation of
            a LoRA student (`use_peft`) from its own base model, the same weights run with the adapters
            disabled, so only one model is in memory (see `distill.students.lora`).
        teacher_dtype (`str`, defaults to `"auto"`):
            dtype in which the teacher's weights are loaded (`auto`, `float32`, `bfloat16`, `float16`).
            Softmax and divergences are computed in float32 whatever this is.
        task (`str`, *optional*):
            `causal-lm`, `seq-cls` or `image-cls`; inferred from the student's class when omitted.
        kd_chunk_size (`int`, *optional*):
            Number of positions per chunk in the causal-LM distillation loss, which is computed
            chunk by chunk so that its memory stays bounded at large vocabularies. Default: about
            2^20 logits per chunk on CPU (256 positions at V = 4096, which keeps the chunk in cache),
            1024 positions on accelerators (fewer above V = 131072); see
            `distill.losses.chunked.default_chunk_size`.
        kd_fused_lm_head (`bool`, defaults to `False`):
            Causal LMs with an online teacher: fuse the distillation loss with both models' LM heads,
            so that logits are computed a chunk of positions at a time from the final hidden states
            and neither model's full ``[B, T, V]`` logits exist in training (evaluation runs the
            models' heads and the chunked loss). Not under ZeRO-3 or FSDP, which shard the heads; see `distill.losses.fused_head`. Sets
            `ddp_find_unused_parameters` to False (DDP's search cannot see a head used after the forward).
        extra_teachers (`list[str]`, *optional*):
            Further teachers for the same task (Hub ids or local directories), after
            `teacher_model_name_or_path`; they must share the student's tokenizer. See
            `distill.teacher.ensemble`.
        teacher_weights (`list[float]`, *optional*):
            One weight per teacher (`teacher_model_name_or_path` first, then `extra_teachers`) for
            `teacher_ensemble: mean`; non-negative with a positive sum, normalised. Default: equal.
        teacher_ensemble (`str`, defaults to `"mean"`):
            How several teachers make one soft target: `mean` (the weighted average of their
            distributions at temperature T) or `most_confident` (per example, or per token for causal
            LMs, the teacher whose top probability at T = 1 is largest).
        augment_fraction (`float`, defaults to 0.0):
            Data-augmentation distillation: the probability that a training example is augmented on the
            fly (in [0, 1]; 0 = off). Teacher and student see the same augmented input; on augmented
            examples the loss is the distillation term alone. See `distill.data.augment`.
        augmentations (`list[str]`, *optional*):
            Which augmentations: text `token_replace`, `span_mask`, `token_drop`; images `flip`,
            `resized_crop`, `mixup`, `cutmix`. Default: `token_replace` for text, `flip` and
            `resized_crop` for images.
        augment_token_prob (`float`, defaults to 0.15):
            Per-token probability of `token_replace` and `token_drop`, and of a span start for `span_mask`.
        augment_span_length (`int`, defaults to 3):
            Tokens per masked span.
        augment_crop_scale (`float`, defaults to 0.5):
            Smallest fraction of the image area `resized_crop` keeps, in (0, 1].
        augment_mix_alpha (`float`, defaults to 1.0):
            Beta(a, a) parameter of `mixup` and `cutmix` (> 0).
        lmbda (`float`, defaults to 0.0):
            On-policy distillation (GKD, causal-lm): the probability, in [0, 1], that an optimizer step trains on
            continuations the student generates from each example's prompt (its masked-label part), scored by the
            teacher, with the `kd_kind` divergence on the generated tokens alone. See `distill.data.on_policy`.
        max_new_tokens (`int`, defaults to 128):
            Longest continuation the student generates in an on-policy step (>= 1).
        generation_temperature (`float`, defaults to 0.9):
            Sampling temperature of those continuations (>= 0; 0 = greedy). Separate from `temperature`, the
            distillation temperature.
        trust_remote_code (`bool`, defaults to `False`):
            Allow custom modelling code from the Hub for teacher and student. Off by default.
        hidden_weight (`float`, defaults to 0.0):
            Weight of the intermediate hidden-state term, added on top of the logit loss:
            ``loss = alpha * T^2 * KD + (1 - alpha) * CE + hidden_weight * hidden + attention_weight * attention``.
            When the widths differ, a learned linear projection (student -> teacher width) trains with the
            student; it is kept in checkpoints, never in the saved model. See `distill.trainer.intermediate`.
        hidden_layer_map (`dict` or `str`, *optional*):
            Student layer -> teacher layer, as indices into transformers' ``hidden_states`` (0 = embedding
            output, i = output of block i), e.g. ``{1: 2, 2: 4}`` or ``"1:2,2:4"``. Default: evenly spaced,
            student block m -> teacher block m * N_teacher // N_student (embeddings left out).
        hidden_loss (`str`, defaults to `"mse"`):
            ``mse`` (mean squared error over the width, TinyBERT) or ``cosine`` (1 - cosine, DistilBERT).
        attention_weight (`float`, defaults to 0.0):
            Weight of MiniLM's self-attention transfer, KL(teacher || student) of the attention distributions
            per head and query, on the blocks of `hidden_layer_map`. Needs the same head count in both models,
            ``attn_implementation="eager"`` and no attention dropout in the student.
        cross_tokenizer_loss (`str`, *optional*):
            Causal LMs whose teacher has another tokenizer than the student: `gold` or `uld`. The teacher
            reads the same text through its own tokenizer and the two token sequences are aligned by
            character offsets (fast tokenizers only). `uld`: Universal Logit Distillation (Boizard et al.
            2024), the Wasserstein-1 distance between the sorted probability vectors of aligned spans;
            `gold` (as in TRL's GOLD): KL on the tokens both vocabularies share, ULD on the rest (with
            identical tokenizers: the forward KL). Unset: different tokenizers are refused. See
            `distill.losses.cross_tokenizer`.
        teacher_tokenizer_name_or_path (`str`, *optional*):
            The teacher's tokenizer for `cross_tokenizer_loss`, when it is not saved in the teacher's directory.
        max_nonfinite_steps (`int`, defaults to 10):
            An optimizer step whose loss or gradient norm is NaN or infinite is skipped (weights and
            optimizer moments untouched, logged as `nonfinite_step_skipped`); after this many in a row
            training stops with an error naming the last good checkpoint. 0 turns the guard off. See
            `distill.trainer.numerics`.
    """

    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the distillation term, in [0, 1]; 0 = labels only, 1 = teacher only."},
    )
    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature of the distillation term (> 0); the term is scaled by T^2."},
    )
    kd_kind: str = field(
        default="forward_kl",
        metadata={"help": f"Divergence: {', '.join(KD_KINDS)}.", "choices": list(KD_KINDS)},
    )
    jsd_beta: float = field(
        default=0.5, metadata={"help": "Teacher weight of the JSD mixture, strictly between 0 and 1."}
    )
    # ---- skew KL (issue 14) ----
    skew_alpha: float = field(
        default=0.1,
        metadata={
            "help": "Skew a of skew_forward_kl / skew_reverse_kl, in [0, 1); 0 = plain KL (DistiLLM: 0.1)."
        },
    )
    teacher_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub id or local directory of the teacher (safetensors weights); 'self': the LoRA student's "
            "own base model, its adapters disabled (one model in memory)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the teacher's weights.", "choices": list(TEACHER_DTYPES)},
    )
    task: Optional[str] = field(
        default=None,
        metadata={
            "help": "causal-lm, seq-cls or image-cls. When omitted: inferred from the student's class "
            "(distill train: from the saved class of the student or teacher, a teacher cache, or "
            "a built-in dataset source)."
        },
    )
    kd_chunk_size: Optional[int] = field(
        default=None,
        metadata={"help": "Positions per chunk in the causal-LM loss (bounds the loss's extra memory)."},
    )
    kd_fused_lm_head: bool = field(
        default=False,
        metadata={
            "help": "Causal LM: compute logits chunk by chunk from hidden states inside the KD loss, so "
            "no full [B, T, V] logits exist in training (not under ZeRO-3 or FSDP)."
        },
    )
    # ---- multi-teacher (issue 14) ----
    extra_teachers: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Further teachers for the same task, after teacher_model_name_or_path (same tokenizer)."
        },
    )
    teacher_weights: Optional[list[float]] = field(
        default=None,
        metadata={
            "help": "One weight per teacher (the first teacher, then extra_teachers) for teacher_ensemble=mean; "
            "non-negative, positive sum. Default: equal."
        },
    )
    teacher_ensemble: str = field(
        default="mean",
        metadata={
            "help": "Several teachers: mean (weighted average of their distributions) or most_confident "
            "(per position, the teacher with the largest top probability).",
            "choices": ["mean", "most_confident"],
        },
    )
    # ---- data-augmentation distillation (issue 14) ----
    augment_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a training example is augmented (teacher and student see the "
            "same augmented input; KD term alone on it); 0 = off."
        },
    )
    augmentations: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "token_replace, span_mask, token_drop (text); flip, resized_crop, mixup, "
            "cutmix (images). Default: token_replace / flip + resized_crop."
        },
    )
    augment_token_prob: float = field(
        default=0.15,
        metadata={"help": "Per-token probability of token_replace / token_drop, span start of span_mask."},
    )
    augment_span_length: int = field(default=3, metadata={"help": "Tokens per span of span_mask."})
    augment_crop_scale: float = field(
        default=0.5, metadata={"help": "Smallest area fraction resized_crop keeps, in (0, 1]."}
    )
    augment_mix_alpha: float = field(
        default=1.0, metadata={"help": "Beta(a, a) parameter of mixup / cutmix (> 0)."}
    )
    # ---- on-policy distillation, GKD (issue 14) ----
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Causal LM: probability in [0, 1] that a step trains on student-generated "
            "continuations of the prompts, scored by the teacher (GKD); 0 = off."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "On-policy steps: longest generated continuation."}
    )
    generation_temperature: float = field(
        default=0.9,
        metadata={"help": "On-policy steps: sampling temperature of the continuations (0 = greedy)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modelling code from the Hub. Off by default for safety."},
    )
    # ---- run fingerprint (distill/trainer/fingerprint.py) ----
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in output_dir: delete an earlier run's checkpoints, results and model there "
            "instead of resuming it (or refusing it, when its settings differ, or when no distill train run "
            "wrote the model there). Alias --overwrite, as on every command.",
            "aliases": ["--overwrite"],
        },
    )

    # ---- cross-tokenizer distillation (issue 20; distill/losses/cross_tokenizer.py) ----
    cross_tokenizer_loss: Optional[str] = field(
        default=None,
        metadata={
            "help": "Teacher with another tokenizer (causal-lm): gold (KL on shared tokens, ULD on the rest) "
            "or uld (sorted-probability Wasserstein-1); spans aligned by character offsets. Unset (or none): "
            "different tokenizers are refused.",
        },
    )
    teacher_tokenizer_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "The teacher's tokenizer for cross_tokenizer_loss (default: the one saved with the teacher)."
        },
    )

    # ---- fault tolerance (distill/trainer/numerics.py) ----
    max_nonfinite_steps: int = field(
        default=10,
        metadata={
            "help": "Skip optimizer steps whose loss or gradient norm is NaN/inf (weights untouched, logged as "
            "nonfinite_step_skipped); stop with an error after this many in a row. 0: no guard."
        },
    )

    # ---- intermediate-layer distillation (hidden states, attention; distill.trainer.intermediate) ----
    hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the hidden-state term added to the loss (0 = off); see hidden_layer_map."
        },
    )
    hidden_layer_map: Union[dict, str, None] = field(
        default=None,
        metadata={
            "help": "Student -> teacher layer indices of hidden_states (0 = embeddings), e.g. '1:2,2:4'; "
            "default: evenly spaced blocks."
        },
    )
    hidden_loss: str = field(
        default="mse",
        metadata={
            "help": "Hidden-state distance: mse (TinyBERT) or cosine (DistilBERT).",
            "choices": list(HIDDEN_LOSSES),
        },
    )
    attention_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of MiniLM attention KL on the mapped blocks (0 = off; needs eager attention)."
        },
    )

    def _check_intermediate(self) -> None:
        for name in ("hidden_weight", "attention_weight"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float)) and value >= 0 and value == value and value != float("inf")
            ):
                raise ValueError(f"{name}={value} must be a finite number >= 0 (0 turns the term off).")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(
                f"hidden_loss={self.hidden_loss!r} is unknown: use one of {', '.join(HIDDEN_LOSSES)}."
            )
        self.hidden_layer_map = parse_layer_map(self.hidden_layer_map)
        if self.hidden_layer_map is not None and self.hidden_weight == 0 and self.attention_weight == 0:
            raise ValueError(
                "hidden_layer_map is set but hidden_weight and attention_weight are 0, so it would be "
                "ignored: set hidden_weight (or attention_weight) > 0, or drop hidden_layer_map."
            )
        if self.hidden_weight > 0 or self.attention_weight > 0:
            # A projection (and the mapped layers' outputs) are used after the forward, where DDP's search
            # for unused parameters cannot see them.
            if self.ddp_find_unused_parameters:
                raise ValueError(
                    "hidden_weight/attention_weight > 0 need ddp_find_unused_parameters=false: the hidden-state "
                    "projection is used after the forward, where DDP's unused-parameter search cannot see it."
                )
            self.ddp_find_unused_parameters = False

    def __post_init__(self):
        check_loss_settings(self.alpha, self.temperature, self.kd_kind, self.jsd_beta, self.skew_alpha)
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(
                f"teacher_dtype={self.teacher_dtype!r} is unknown: use one of {', '.join(TEACHER_DTYPES)}."
            )
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is unknown: use one of {', '.join(TASKS)}.")
        if self.max_nonfinite_steps < 0:
            raise ValueError(
                f"max_nonfinite_steps={self.max_nonfinite_steps} must be >= 0 (0 turns the guard off)."
            )
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size={self.kd_chunk_size} must be a positive integer.")
        self._check_intermediate()
        self._check_teachers()
        self._check_augmentation()
        self._check_on_policy()
        self._check_cross_tokenizer()
        if self.kd_fused_lm_head:
            # The fused loss uses the head weight after the forward; DDP's unused-parameter search
            # would mark an untied head unused and then fail on its gradient ("marked ready twice").
            if self.ddp_find_unused_parameters:
                raise ValueError(
                    "kd_fused_lm_head=true needs ddp_find_unused_parameters=false: DDP's search for unused "
                    "parameters cannot see the LM head, which the fused loss uses after the forward."
                )
            self.ddp_find_unused_parameters = False
        # Without an accelerator, torch.distributed launches (accelerate launch --multi_gpu, torchrun)
        # only synchronise gradients when use_cpu is set; otherwise each rank silently trains alone.
        if not self.use_cpu and _no_accelerator():
            self.use_cpu = True
        super().__post_init__()
        # With use_cpu, TrainingArguments skips accelerate's DeepSpeed start-up, so deepspeed.comm is not
        # initialised and zero.Init (from_pretrained/from_config under ZeRO-3) would see a world size of 1.
        if self.deepspeed and self.use_cpu and self.world_size > 1:
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")

    def _check_teachers(self) -> None:
        """The multi-teacher fields (issue 14) fit together; the number of teachers is checked again when
        the trainer is given teacher models directly."""
        from .teacher.ensemble import ENSEMBLE_MODES, normalized_teacher_weights

        if self.teacher_ensemble not in ENSEMBLE_MODES:
            raise ValueError(
                f"teacher_ensemble={self.teacher_ensemble!r} is unknown: use one of "
                f"{', '.join(ENSEMBLE_MODES)}."
            )
        from .students.lora import is_self_teacher, self_teacher_conflicts

        if is_self_teacher(self.teacher_model_name_or_path) and self_teacher_conflicts(self):
            raise ValueError(
                f"teacher_model_name_or_path: self (the LoRA student's own base model) does not work with "
                f"{', '.join(self_teacher_conflicts(self))}: turn those off, or name a separate teacher."
            )
        if self.extra_teachers and not self.teacher_model_name_or_path:
            raise ValueError("extra_teachers needs teacher_model_name_or_path (the first teacher) as well.")
        if self.extra_teachers and self.kd_fused_lm_head:
            raise ValueError(
                "kd_fused_lm_head works with one teacher only; set it to false for extra_teachers."
            )
        if self.teacher_weights is not None:
            if self.teacher_ensemble != "mean":
                raise ValueError(
                    "teacher_weights apply to teacher_ensemble='mean' only; remove them for "
                    f"{self.teacher_ensemble}."
                )
            n = len(self.teacher_weights)
            if self.teacher_model_name_or_path:
                n = 1 + len(self.extra_teachers or [])
            normalized_teacher_weights(self.teacher_weights, n)

    def _check_augmentation(self) -> None:
        """Ranges of the augmentation fields (issue 14); which augmentations fit the task is checked here
        when `task` is set, else when the trainer knows the task."""
        from .data.augment import check_augmentations

        if not 0.0 <= self.augment_fraction <= 1.0:
            raise ValueError(
                f"augment_fraction={self.augment_fraction} must be in [0, 1] (0 = no augmentation)."
            )
        if not 0.0 <= self.augment_token_prob <= 1.0:
            raise ValueError(f"augment_token_prob={self.augment_token_prob} must be in [0, 1].")
        if self.augment_span_length < 1:
            raise ValueError(f"augment_span_length={self.augment_span_length} must be a positive integer.")
        if not 0.0 < self.augment_crop_scale <= 1.0:
            raise ValueError(f"augment_crop_scale={self.augment_crop_scale} must be in (0, 1].")
        if not self.augment_mix_alpha > 0:
            raise ValueError(f"augment_mix_alpha={self.augment_mix_alpha} must be greater than 0.")
        check_augmentations(self.augmentations, self.task)
        if self.augment_fraction > 0:
            if self.alpha == 0:
                raise ValueError(
                    "augment_fraction > 0 distils on augmented inputs and needs a teacher: set alpha > 0 "
                    "or augment_fraction: 0."
                )
            if self.kd_fused_lm_head:
                raise ValueError(
                    "augment_fraction > 0 is not supported with kd_fused_lm_head; set one of them off."
                )

    def _check_cross_tokenizer(self) -> None:
        """`cross_tokenizer_loss` (issue 20) and what it cannot be combined with."""
        if self.cross_tokenizer_loss in ("", "none"):
            self.cross_tokenizer_loss = None
        if self.cross_tokenizer_loss is None:
            if self.teacher_tokenizer_name_or_path:
                raise ValueError(
                    "teacher_tokenizer_name_or_path is only used by cross_tokenizer_loss: set "
                    "cross_tokenizer_loss (gold or uld), or drop teacher_tokenizer_name_or_path."
                )
            return
        if self.cross_tokenizer_loss not in CROSS_TOKENIZER_LOSSES:
            raise ValueError(
                f"cross_tokenizer_loss={self.cross_tokenizer_loss!r} is unknown: use one of "
                f"{', '.join(CROSS_TOKENIZER_LOSSES)}."
            )
        if self.task is not None and self.task != "causal-lm":
            raise ValueError(f"cross_tokenizer_loss applies to causal-lm only, not task {self.task!r}.")
        if self.alpha == 0:
            raise ValueError(
                "cross_tokenizer_loss distils from a teacher: set alpha > 0, or drop cross_tokenizer_loss."
            )
        if self.kd_kind != "forward_kl":
            raise ValueError(
                f"kd_kind={self.kd_kind!r} does not apply with cross_tokenizer_loss, which is its own divergence "
                "(gold: KL on shared tokens, uld: sorted Wasserstein-1): leave kd_kind at forward_kl."
            )
        combined = {
            "kd_fused_lm_head": self.kd_fused_lm_head,
            "extra_teachers": bool(self.extra_teachers),
            "augment_fraction": self.augment_fraction > 0,
            "lmbda": self.lmbda > 0,
            "hidden_weight": self.hidden_weight > 0,
            "attention_weight": self.attention_weight > 0,
        }
        for name, used in combined.items():
            if used:
                raise ValueError(
                    f"cross_tokenizer_loss does not work with {name} (yet): turn {name} off, or drop "
                    "cross_tokenizer_loss and give the student the teacher's tokenizer."
                )

    def _check_on_policy(self) -> None:
        """The on-policy fields (issue 14); the task and tokenizer are checked by the trainer."""
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(
                f"lmbda={self.lmbda} must be in [0, 1] (the probability of an on-policy step; 0 = off)."
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be a positive integer.")
        if not self.generation_temperature >= 0:
            raise ValueError(
                f"generation_temperature={self.generation_temperature} must be >= 0 (0 = greedy)."
            )
        if self.lmbda > 0:
            if self.task is not None and self.task != "causal-lm":
                raise ValueError(
                    f"lmbda={self.lmbda} > 0 (on-policy distillation) applies to causal-lm only, not "
                    f"task {self.task!r}: set lmbda: 0."
                )
            if self.alpha == 0:
                raise ValueError(
                    "lmbda > 0 trains on the teacher's scores of the student's continuations and needs a "
                    "teacher: set alpha > 0 or lmbda: 0."
                )
