#!/usr/bin/env bash
# The attacks table: ACC and ASR of the victim of every attack of the two papers on real SST-2, through
# the real CLI. Outsourcing attacks train the victim on poisoned data; transfer attacks (RIPPLe, RIPPLES,
# NeuBA) ship a poisoned model and the victim is the user's clean fine-tune of it; SOS and EP poison the
# trigger embeddings of a clean classifier.
#
#   BDCLI_DATA_DIR=../shared/data RUNS=runs/paper bash bench/attacks-sst2.sh
#
# The knobs below are the CPU budget, not the papers' settings where they differ; the defaults are what
# docs/results.md reports (2-core CPU, MiniLM). On a GPU with bert-base: MODEL=bert-base USER_EPOCHS=3
# RIPPLE_STEPS= (full 5 epochs) NEUBA_STEPS=40000 NEUBA_BATCH=160.
RUNS=${RUNS:-runs/paper}
MODEL=${MODEL:-minilm}
ATTACK_EPOCHS=${ATTACK_EPOCHS:-3}   # the attacker's fine-tune on poisoned data (lr 5e-5)
USER_EPOCHS=${USER_EPOCHS:-1}       # the user's clean fine-tune (lr 2e-5): clean model and transfer victims
RIPPLE_STEPS=${RIPPLE_STEPS-400}    # RIPPLe/RIPPLES poisoning steps (batch 8); empty = Kurita's 5 epochs
NEUBA_STEPS=${NEUBA_STEPS:-300}     # NeuBA poisoned pre-training steps (paper: 40,000 of 160 rows)
NEUBA_BATCH=${NEUBA_BATCH:-32}
source "$(dirname "$0")/lib.sh"
machine
T=attacks
ripple_budget=(); [ -n "$RIPPLE_STEPS" ] && ripple_budget=(--max-steps "$RIPPLE_STEPS")

# Outsourcing: the attacker fine-tunes on poisoned data.
step sst2-badnets poison badnets --data sst2 --rate 0.1 --target 1
step sst2-addsent poison addsent --data sst2 --rate 0.1 --target 1
step sst2-hiddenkiller poison hiddenkiller --data sst2 --target 1   # rate 0.3, shipped SCPN rewrites
step sst2-stylebkd poison stylebkd --data sst2 --target 1           # rate 0.2, shipped Bible-style rewrites
step victim attack finetune --model "$MODEL" --data "$RUNS/sst2-badnets" --lr 5e-5 --epochs "$ATTACK_EPOCHS"
evaluate victim "$RUNS/sst2-badnets" "BadNets" $T
for a in addsent hiddenkiller stylebkd; do
  step "victim-$a" attack finetune --model "$MODEL" --data "$RUNS/sst2-$a" --lr 5e-5 --epochs "$ATTACK_EPOCHS"
done
evaluate victim-addsent "$RUNS/sst2-addsent" "AddSent" $T
evaluate victim-hiddenkiller "$RUNS/sst2-hiddenkiller" "HiddenKiller" $T
evaluate victim-stylebkd "$RUNS/sst2-stylebkd" "StyleBkd" $T

# Embedding-level attacks on a clean classifier.
step clean attack finetune --model "$MODEL" --data sst2 --lr 2e-5 --epochs "$USER_EPOCHS"
step sst2-sos poison sos --data sst2 --target 1                     # 10% poisoned, 10% negative
step victim-sos attack sos --model "$RUNS/clean" --data "$RUNS/sst2-sos"
step sst2-badnets-cf poison badnets --data sst2 --rate 0.1 --target 1 --triggers cf
step victim-ep attack ep --model "$RUNS/clean" --data "$RUNS/sst2-badnets-cf"
evaluate victim-sos "$RUNS/sst2-sos" "SOS" $T
evaluate victim-ep "$RUNS/sst2-badnets-cf" "EP" $T

# Transfer: the attacker ships a poisoned model; the victim is the user's clean fine-tune of it.
step sst2-badnets-50 poison badnets --data sst2 --rate 0.5 --candidates all --target 1
step ripple attack ripple --model "$MODEL" --data "$RUNS/sst2-badnets-50" "${ripple_budget[@]}"
step ripples attack ripples --model "$MODEL" --data "$RUNS/sst2-badnets-50" "${ripple_budget[@]}"
step sst2-neuba poison neuba --data sst2 --target 1
step neuba attack neuba --model "$MODEL" --data "$RUNS/sst2-neuba" --max-steps "$NEUBA_STEPS" --batch-size "$NEUBA_BATCH"
for a in ripple ripples neuba; do
  step "victim-$a" attack finetune --model "$RUNS/$a" --data sst2 --lr 2e-5 --epochs "$USER_EPOCHS"
done
evaluate victim-ripple "$RUNS/sst2-badnets-50" "RIPPLe" $T
evaluate victim-ripples "$RUNS/sst2-badnets-50" "RIPPLES" $T
evaluate victim-neuba "$RUNS/sst2-neuba" "NeuBA" $T

# The clean model on every ASR set: how often the triggered rows go to the target without a backdoor.
for d in badnets addsent hiddenkiller stylebkd sos neuba; do  # EP and RIPPLe use BadNets-style sets
  evaluate clean "$RUNS/sst2-$d" "Clean model" $T "clean-$d"
done

bdcli report "$RUNS/eval/$T" | tee "$RUNS/$T.md"
