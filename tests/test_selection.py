from seam.reengineer.stopping import AccuracyTarget as Selector


def run(selector, rows):
    for epoch, (acc, ret) in enumerate(rows):
        selector.update(epoch, acc, ret)
        if selector.should_stop:
            return epoch
    return None


def test_lowest_retention_among_epochs_reaching_the_original():
    s = Selector(target_acc=0.9, early_stop=0)
    run(s, [(0.95, 1.0), (0.91, 0.5), (0.85, 0.1), (0.92, 0.3), (0.89, 0.2)])
    assert s.selected_epoch == 3 and s.reached_target


def test_tie_on_retention_prefers_higher_accuracy():
    s = Selector(target_acc=0.9, early_stop=0)
    run(s, [(0.91, 0.3), (0.95, 0.3), (0.93, 0.3)])
    assert s.selected_epoch == 1


def test_early_stop_counts_epochs_since_the_last_new_best():
    s = Selector(target_acc=0.9, early_stop=2)
    stopped = run(s, [(0.5, 1.0), (0.5, 0.9), (0.92, 0.5), (0.93, 0.6), (0.95, 0.4), (0.8, 0.1), (0.99, 0.45), (0.9, 0.3)])
    assert stopped == 6 and s.selected_epoch == 4


def test_no_early_stop_before_the_target_is_reached():
    s = Selector(target_acc=0.99, early_stop=1)
    assert run(s, [(0.5, 1.0), (0.6, 0.5), (0.7, 0.4)]) is None


def test_fallback_is_best_accuracy_minus_retention():
    s = Selector(target_acc=0.99, early_stop=3)
    run(s, [(0.9, 1.0), (0.8, 0.3), (0.85, 0.5), (0.7, 0.05)])
    assert not s.reached_target and s.selected_epoch == 3  # 0.65 beats 0.5, 0.35 and -0.1
