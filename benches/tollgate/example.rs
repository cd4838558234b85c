//! The example service's own router (`examples/graphql.rs`, included here
//! as a module), with and without tollgate's layers, called in process with
//! a Prometheus recorder installed: what the layers cost in the example's
//! real configuration — metrics, tracing, CSRF guard, two limiters, the
//! verified-token cache — which the layer benches alone do not show.
//!
//! `cargo bench --bench tollgate -- example`

use std::time::Duration;

use criterion::Criterion;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[path = "../support/example_app.rs"]
mod example_app;

use example_app::{config, graphql};

pub fn bench(c: &mut Criterion) {
    if !crate::selected("example") {
        return;
    }
    tollgate::crypto::install_default_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let cookie = example_app::cookie();
    let request = || example_app::request(&cookie);

    let mut group = c.benchmark_group("example");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    for (name, layers) in [("bare", "off"), ("layers", "on")] {
        let app = rt
            .block_on(graphql::app(&config(layers), handle.clone()))
            .expect("app");
        metrics::with_local_recorder(&recorder, || {
            group.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let res = app.clone().oneshot(request()).await.expect("infallible");
                        assert_eq!(res.status(), 200);
                        res.into_body().collect().await.expect("body").to_bytes()
                    })
                })
            });
        });
    }
    group.finish();
    // The layers did count: the recorder saw their decisions.
    let rendered = handle.render();
    assert!(
        rendered.contains("tollgate_rate_limit_decisions_total"),
        "the example's metrics were recorded"
    );
}
