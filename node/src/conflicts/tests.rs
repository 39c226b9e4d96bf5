use super::*;

fn task(id: &str, phase: Phase, files: &[&str], head: Option<&str>) -> ActiveTask {
    ActiveTask {
        task: TaskRef {
            task_id: id.into(),
            short_id: id.into(),
            title: format!("task {id}"),
            state: if phase == Phase::Running { "executing" } else { "complete" }.into(),
            system: None,
        },
        phase,
        files: files.iter().map(|f| f.to_string()).collect(),
        head: head.map(str::to_string),
    }
}

fn set(files: &[&str]) -> BTreeSet<String> {
    files.iter().map(|f| f.to_string()).collect()
}

#[test]
fn overlap_finds_equal_paths_and_directories_holding_files() {
    let check = |a: &[&str], b: &[&str], expected: &[&str]| {
        assert_eq!(overlap(&set(a), &set(b)), expected, "{a:?} vs {b:?}");
        assert_eq!(overlap(&set(b), &set(a)), expected, "{b:?} vs {a:?} (symmetric)");
    };
    check(&["a.rs"], &["b.rs"], &[]);
    check(&["src/a.rs", "x"], &["src/a.rs"], &["src/a.rs"]);
    check(&["src"], &["src/a.rs"], &["src", "src/a.rs"]);
    check(&["src/deep/a.rs"], &["src"], &["src", "src/deep/a.rs"]);
    check(&["src-old/a.rs", "src.rs"], &["src"], &[]);
    check(&["src", "src-old/a.rs", "src/z"], &["src/z"], &["src", "src/z"]);
    check(&[], &["a"], &[]);
}

#[test]
fn only_overlapping_finished_branches_and_finished_branches_against_the_target_go_to_git() {
    let tasks = [
        task("a", Phase::Finished, &["f.txt"], Some("h1")),
        task("b", Phase::Finished, &["f.txt", "g.txt"], Some("h2")),
        task("c", Phase::Running, &["g.txt"], Some("h3")),
        task("d", Phase::Finished, &["other.txt"], Some("h4")),
        task("e", Phase::Finished, &[], Some("h5")),
    ];
    let pairs = predict_pairs(&tasks, Some("t0"));
    assert_eq!(
        pairs.overlaps,
        vec![(0, 1, vec!["f.txt".to_string()]), (1, 2, vec!["g.txt".to_string()])]
    );
    let q = |o: &str, t: &str| MergeQuestion { ours: o.into(), theirs: t.into() };
    assert_eq!(
        pairs.merges,
        BTreeSet::from([q("h1", "h2"), q("t0", "h1"), q("t0", "h2"), q("t0", "h4")]),
        "the running task and the one that touched nothing are not merged"
    );
}

#[test]
fn judge_reports_overlaps_of_running_tasks_git_conflicts_and_drops_clean_merges() {
    let tasks = [
        task("a", Phase::Finished, &["f.txt"], Some("h1")),
        task("b", Phase::Finished, &["f.txt"], Some("h2")),
        task("c", Phase::Running, &["f.txt"], None),
        task("d", Phase::Finished, &["g.txt"], Some("h4")),
        task("e", Phase::Finished, &["g.txt"], Some("h5")),
    ];
    let pairs = predict_pairs(&tasks, Some("t0"));
    let q = |o: &str, t: &str| MergeQuestion { ours: o.into(), theirs: t.into() };
    let answers: MergeAnswers = [
        (q("h1", "h2"), vec!["f.txt".to_string()]),
        (q("h4", "h5"), vec![]),
        (q("t0", "h1"), vec![]),
        (q("t0", "h2"), vec![]),
        (q("t0", "h4"), vec!["g.txt".to_string()]),
    ]
    .into();
    let got = judge(&tasks, &pairs, &answers, Some(("main", "t0")));
    let summary: Vec<_> = got
        .iter()
        .map(|c| {
            (
                c.kind,
                c.task.task_id.as_str(),
                c.other.as_ref().map_or("target", |o| o.task_id.as_str()),
                c.files.join(","),
                c.running,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ConflictKind::Merge, "a", "b", "f.txt".to_string(), false),
            (ConflictKind::Merge, "d", "target", "g.txt".to_string(), false),
            (ConflictKind::Overlap, "a", "c", "f.txt".to_string(), true),
            (ConflictKind::Overlap, "b", "c", "f.txt".to_string(), true),
        ],
        "d and e merge cleanly with each other: no conflict between them"
    );
    assert_eq!(got[1].target.as_deref(), Some("main"));
    assert_eq!(got[0].pair_key(), "a+b");
    assert!(got[0].describe_from("b").starts_with("conflicts with a (task a): f.txt"));
}

#[test]
fn a_merge_git_could_not_judge_stays_an_overlap() {
    let tasks = [
        task("a", Phase::Finished, &["f.txt"], Some("h1")),
        task("b", Phase::Finished, &["f.txt"], Some("h2")),
    ];
    let pairs = predict_pairs(&tasks, None);
    let got = judge(&tasks, &pairs, &MergeAnswers::new(), None);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].kind, got[0].running), (ConflictKind::Overlap, false));
}

#[test]
fn a_pair_key_is_the_same_from_either_side() {
    let a = task("b", Phase::Running, &["f"], None).task;
    let b = task("a", Phase::Running, &["f"], None).task;
    let conflict = |x: &TaskRef, y: &TaskRef| PredictedConflict {
        kind: ConflictKind::Overlap,
        task: x.clone(),
        other: Some(y.clone()),
        target: None,
        files: vec!["f".into()],
        running: true,
    };
    assert_eq!(conflict(&a, &b).pair_key(), conflict(&b, &a).pair_key());
    assert!(conflict(&a, &b).involves("a") && !conflict(&a, &b).involves("c"));
}

#[test]
fn land_order_puts_conflicting_tasks_one_after_the_other() {
    let conflict = |x: &str, y: &str| PredictedConflict {
        kind: ConflictKind::Merge,
        task: task(x, Phase::Finished, &[], None).task,
        other: Some(task(y, Phase::Finished, &[], None).task),
        target: None,
        files: vec!["f".into()],
        running: false,
    };
    let ids = |s: &[&str]| s.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let check = |tasks: &[&str], conflicts: &[PredictedConflict], expected: &[&str]| {
        assert_eq!(land_order(&ids(tasks), conflicts), ids(expected), "{tasks:?}");
    };
    check(&["a", "b", "c"], &[], &["a", "b", "c"]);
    check(&["a", "b", "c", "d"], &[conflict("a", "d")], &["a", "d", "b", "c"]);
    check(&["a", "b", "c", "d"], &[conflict("d", "b")], &["a", "b", "d", "c"]);
    // a chain a-c, c-e: breadth first from a
    check(
        &["a", "b", "c", "d", "e"],
        &[conflict("c", "e"), conflict("a", "c")],
        &["a", "c", "e", "b", "d"],
    );
    // conflicts naming tasks not to land are ignored; a repeated pair counts once
    check(&["a", "b"], &[conflict("a", "x"), conflict("b", "a"), conflict("a", "b")], &["a", "b"]);
    let target = PredictedConflict { other: None, ..conflict("a", "b") };
    check(&["a", "b", "c"], &[target], &["a", "b", "c"]);
}

#[test]
fn phases_follow_the_task_states() {
    use ccm_schema::TaskState as S;
    assert_eq!(Phase::of(S::Complete), Some(Phase::Finished));
    assert_eq!(Phase::of(S::Executing), Some(Phase::Running));
    assert_eq!(Phase::of(S::Created), None);
    assert_eq!(Phase::of(S::Cancelled), None);
}
