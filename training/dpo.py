"""One LoRA DPO run: TRL's DPOTrainer as its authors run it, on the same setup as SFT (training.sft).

The base model, tokenizer, adapter config, precision, distributed arguments, callbacks, checkpoints, exact
resume, saving and failure reporting are SFT's (training.sft.train runs this module's trainer). What differs:

- the rows are the preference rows the validation stage tokenized (training.preference: TRL's own
  `prompt_ids`/`chosen_ids`/`rejected_ids`), memory-mapped; TRL's dataset preparation is skipped for them;
- the model passed in is the plain base model with `peft_config`, so TRL wraps it with the fresh adapter and
  computes the reference log-probabilities with the adapter disabled: the reference is the base model, with
  no second copy in memory (with a model that is already a PeftModel, TRL copies its adapter as the reference
  instead: the path for continued training);
- TRL's collator pads each batch (DPO's padding-free mode is not available in TRL 1.x) and truncates each
  sequence to max_seq_length, keeping its start; TRL's defaults otherwise (sigmoid loss, dropout disabled in
  the policy, as its authors train), and none of loraq's SFT speed tricks (training.speedups).
"""

from __future__ import annotations

import math

from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from loraq.dataset_format import PREFERENCE
from loraq.job_spec import DpoHyperparameters
from training import distributed
from training.config import TrainingConfig
from training.hardware import pick_precision, use_gradient_checkpointing
from training.lora import attach_lora
from training.preference import COLUMNS
from training.progress import ProgressCallback
from training.sft import load_model, load_rows, load_tokenizer, shared_arguments, with_dataset_hashes


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on rows already tokenized by TRL's rules (training.preference, which the tests hold equal to
    TRL's own preparation): they are used as they are, memory-mapped."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if set(COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def micro_batches(hp: DpoHyperparameters, processes: int) -> tuple[int, int]:
    """(examples per forward pass, passes per optimizer step) for each process: one step's
    batch_size x gradient_accumulation_steps examples shared evenly by the processes (training.config checks
    they can be), in forward passes of at most batch_size examples."""
    per_process = hp.batch_size * hp.gradient_accumulation_steps // processes
    size = math.gcd(per_process, hp.batch_size)
    return size, per_process // size


def longest_pair(dataset) -> int:
    """Tokens of the longest sequence a batch holds (prompt and the longer output), from the columns' offsets."""
    import pyarrow.compute as pc

    lengths = [pc.list_value_length(dataset.data.column(name)).to_numpy() for name in COLUMNS]
    if not len(lengths[0]):
        return 1
    return int((lengths[0] + lengths[1].clip(min=lengths[2])).max())


def build_dpo_trainer(config: TrainingConfig, model_path: str, callback: ProgressCallback) -> DPOTrainer:
    config = with_dataset_hashes(config)
    hp = config.hyperparameters
    assert isinstance(hp, DpoHyperparameters)  # training.config gives a dpo run its method's class
    precision = pick_precision()
    tokenizer = load_tokenizer(config, model_path)
    model = load_model(config, model_path, precision)
    with distributed.main_process_first():  # rank 0 tokenizes a file that has no tokenized copy yet
        train_ds = load_rows(config, tokenizer, "train", PREFERENCE)
        eval_ds = load_rows(config, tokenizer, "eval", PREFERENCE) if config.eval_path else None
    batch, accumulation = micro_batches(hp, config.nproc_per_node)
    # A forward pass holds each example twice (prompt + preferred, prompt + non-preferred), padded.
    tokens = 2 * batch * min(longest_pair(train_ds), hp.max_seq_length)
    checkpointing = use_gradient_checkpointing(hp.gradient_checkpointing, model, tokens, precision["dtype"])
    args = DPOConfig(
        output_dir=config.checkpoint_dir,
        beta=hp.beta,
        max_length=hp.max_seq_length,
        truncation_mode="keep_start",
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,  # -1: the epochs decide
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=accumulation,
        **shared_arguments(config, precision, checkpointing, evaluating=eval_ds is not None),
    )
    # A new adapter: the base model with it disabled is the reference (no second copy). Continued training (from
    # an SFT model, the common path): TRL keeps a copy of the starting adapter, "ref", as the reference.
    model, peft_config = attach_lora(model, config)
    trainer = PretokenizedDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # our ProgressCallback reports the same, readably
    return trainer
