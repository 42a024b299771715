#!/usr/bin/env bash
# Train the demo's tiny LLaVA on the synthetic colour task, with LLaVA's instruction-tuning entry point.
#
#   bash scripts/demo/train_colour_model.sh [OUT]        (default checkpoints/llava-v1.5-tiny-colour)
#
# Three steps, all offline and deterministic: the starting language model (a Llama folder of width 128, 2 layers,
# 4 heads, drawn for training) with the hand-set colour CLIP beside it; the training images and conversations
# (shapes of radius 13-45 px; the held-out MME set keeps 13-17 px); LLaVA's stage 2 (v1 template, projector and
# language model learn, the tower is frozen) from a new projector. One thread: on a shared 2-core machine two
# threads were several times slower (docs/Training.md, "Throughput"). The weights the demo ships were written by
# this script with its defaults; docs/Training.md has the run's numbers. STEPS, RADIUS and IMAGES (training images)
# override the defaults, e.g. for a quick check.
set -euo pipefail
OUT=${1:-checkpoints/llava-v1.5-tiny-colour}
WORK=${WORK:-checkpoints/demo-colour-work}
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-1500}
RADIUS=${RADIUS:-13-45}
IMAGES=${IMAGES:-3000}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

TOWER=clip-vit-tiny-patch14-336
$PYTHON -m llava.tools.make_tiny_checkpoint --out "$WORK/llama" --format llama --tower colour --init train \
    --tokenizer-legacy --hidden-size 128 --layers 2 --heads 4
$PYTHON -m llava.tools.make_synthetic_data --out "$WORK/data" --task colour --train "$IMAGES" --test 50 --turns 5 \
    --train-radius "$RADIUS"
# --vision_tower by its folder name: found inside the Llama folder, and written so into the trained config, which
# then finds the copy placed inside OUT below.
$PYTHON -m llava.train.train --model_name_or_path "$WORK/llama" --version v1 \
    --data_path "$WORK/data/train/synthetic_instruct.json" --image_folder "$WORK/data/train/images" \
    --vision_tower "$TOWER" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 \
    --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad \
    --model_max_length 2048 --per_device_train_batch_size 8 --gradient_accumulation_steps 1 \
    --learning_rate 2e-3 --adam_beta2 0.98 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
    --max_steps "$STEPS" --logging_steps 50 --save_strategy steps --save_steps 300 --save_total_limit 1 \
    --seed 42 --output_dir "$OUT"
rm -rf "$OUT/$TOWER" && cp -r "$WORK/llama/$TOWER" "$OUT/$TOWER"
rm -rf "$OUT"/checkpoint-*
echo "trained model in $OUT; try: python -m llava.tools.demo --model-path $OUT --mme-dir $WORK/data/eval/MME/MME_Benchmark_release_version"
