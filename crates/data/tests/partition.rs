//! Splits among data holders: disjoint, complete, reproducible, and skewed as named.

use blindfold_data::{class_histogram, partition, Partition};

/// 10 classes, 200 examples each, interleaved.
fn labels() -> Vec<u8> {
    (0..2000).map(|i| (i % 10) as u8).collect()
}

fn check_disjoint_and_complete(parts: &[Vec<usize>], n: usize) {
    let mut seen = vec![false; n];
    for p in parts {
        for &i in p {
            assert!(!seen[i], "example {i} given to two holders");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "some example given to no holder");
}

/// Mean over holders of the largest class's share of the holder's examples.
fn mean_max_class_share(labels: &[u8], parts: &[Vec<usize>]) -> f64 {
    parts.iter().map(|p| *class_histogram(labels, p, 10).iter().max().unwrap() as f64 / p.len() as f64).sum::<f64>()
        / parts.len() as f64
}

#[test]
fn iid_is_balanced_and_reproducible() {
    let l = labels();
    let a = partition(&l, 5, Partition::Iid, 1).unwrap();
    check_disjoint_and_complete(&a, l.len());
    assert!(a.iter().all(|p| p.len() == 400));
    assert_eq!(a, partition(&l, 5, Partition::Iid, 1).unwrap());
    assert_ne!(a, partition(&l, 5, Partition::Iid, 2).unwrap());
    assert!(mean_max_class_share(&l, &a) < 0.2);
}

#[test]
fn label_skew_gives_each_holder_k_classes() {
    let l = labels();
    let parts = partition(&l, 5, Partition::LabelSkew(2), 3).unwrap();
    check_disjoint_and_complete(&parts, l.len());
    for p in &parts {
        let classes = class_histogram(&l, p, 10).iter().filter(|&&c| c > 0).count();
        assert_eq!(classes, 2);
    }
    // Overlapping ownership (3 holders, 4 classes each): still disjoint.
    let parts = partition(&l, 3, Partition::LabelSkew(4), 3).unwrap();
    for p in &parts {
        assert_eq!(class_histogram(&l, p, 10).iter().filter(|&&c| c > 0).count(), 4);
    }
    assert!(partition(&l, 3, Partition::LabelSkew(11), 3).is_err());
}

#[test]
fn smaller_dirichlet_concentration_skews_more() {
    let l = labels();
    let mild = partition(&l, 5, Partition::Dirichlet(100.0), 4).unwrap();
    let strong = partition(&l, 5, Partition::Dirichlet(0.3), 4).unwrap();
    check_disjoint_and_complete(&mild, l.len());
    check_disjoint_and_complete(&strong, l.len());
    let (m, s) = (mean_max_class_share(&l, &mild), mean_max_class_share(&l, &strong));
    assert!(m < 0.2 && s > 0.3, "max class share: α=100 {m:.2}, α=0.3 {s:.2}");
}

#[test]
fn size_skew_grows_with_the_holder_index() {
    let l = labels();
    let parts = partition(&l, 4, Partition::SizeSkew, 5).unwrap();
    check_disjoint_and_complete(&parts, l.len());
    let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![200, 400, 600, 800]);
}

#[test]
fn split_names_parse_and_bad_ones_are_refused() {
    for s in ["iid", "label-skew:2", "dirichlet:0.3", "size-skew"] {
        assert_eq!(s.parse::<Partition>().unwrap().to_string(), s);
    }
    for s in ["", "dirichlet:-1", "dirichlet:nan", "label-skew:0", "label-skew:x", "random"] {
        let err = s.parse::<Partition>().unwrap_err().to_string();
        assert!(err.contains("split"), "{s}: {err}");
    }
    assert!(partition(&labels(), 0, Partition::Iid, 0).is_err());
}
