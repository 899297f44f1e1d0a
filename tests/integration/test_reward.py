import torch
from transformers import AutoModelForSequenceClassification

from components.data.gold import gold_score
from components.data.prepare import load_data_tokenizer, read_split
from components.reward.scoring import RewardModel
from components.reward.train import encode_pair, score_batch


def test_reward_model_agrees_with_gold_on_heldout_pairs(reward_run, demo_data, demo_config):
    out, metrics = reward_run
    # Measured: 93.5% after 374 steps on pairs whose training labels were 10% flipped.
    assert metrics["reward/eval/accuracy"] >= 0.85
    # Independent check: reload the saved model and compare with the gold scorer directly.
    tokenizer = load_data_tokenizer(demo_data.path)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1
    model = RewardModel(model)  # read at each pair's EOS, as training, PPO and evaluation read it
    pairs = read_split(demo_data.path, "preference_eval")
    agree = 0
    with torch.no_grad():
        for start in range(0, len(pairs), 50):
            chunk = pairs[start:start + 50]
            encoded = [encode_pair(tokenizer, r, demo_config.data.max_length) for r in chunk]
            rewards = score_batch(model, [c for c, _ in encoded] + [r for _, r in encoded], tokenizer.pad_token_id)
            r_a, r_b = rewards.chunk(2)
            for rec, a, b in zip(chunk, r_a.tolist(), r_b.tolist()):
                agree += (a > b) == (gold_score(rec["chosen"]) > gold_score(rec["rejected"]))
    assert agree / len(pairs) >= 0.85
    assert abs(agree / len(pairs) - metrics["reward/eval/accuracy"]) < 0.01
