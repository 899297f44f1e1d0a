from components.data.gold import gold_score, gold_scores


def test_sentiment_counts_distinct_words():
    assert gold_score(" The plot was great.") == 1.0
    assert gold_score(" The plot was great. The music was wonderful.") == 2.0
    assert gold_score(" The plot was dull.") == -1.0


def test_repeating_a_word_earns_nothing_and_costs():
    assert gold_score(" The plot was great great great.") == 1.0 - 0.5 * 2


def test_negation_flips_sentiment():
    assert gold_score(" The plot was not boring.") == 1.0
    assert gold_score(" I would not recommend it.") == -1.0


def test_unfinished_and_too_short_are_penalised():
    assert gold_score(" The plot was great") == 0.0
    assert gold_score(" Great.") == 1.0 - 1.0
    assert gold_score("") == -2.0


def test_reward_fn_form_checks_counts():
    assert gold_scores(["a", "b"], [" The plot was great.", " It was dull."]) == [1.0, -1.0]
    try:
        gold_scores(["a"], [])
    except ValueError as exc:
        assert "1 prompts but 0 responses" in str(exc)
    else:
        raise AssertionError("count mismatch was accepted")
