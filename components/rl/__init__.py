"""The RL core every on-policy stage shares (PPO and its critic-free estimators, ES) and the evaluation and feedback
reuse: `config` (sampling, reward terms), `generation` (the Actor, sampling, decoding), `rewards` (reward terms,
combining and checking scores), `scoring` (a sampled batch made complete), `driver` (stage inputs, prompt encoding,
the training loop with periodic held-out evaluation, resume and output files). Nothing here is one algorithm's."""
