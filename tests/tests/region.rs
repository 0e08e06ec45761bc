//! Region discovery end to end: a bucket in eu-central-1, behind a proxy
//! that refuses requests signed for another region as S3 does (moto does not
//! check). An import that names no region finds the bucket's own; one that
//! names a wrong region is corrected, not failed, for listing and copying.
//! The workers are processes of their own whose S3 endpoint is the proxy
//! (nothing is set in this process's environment); each phase starts a new
//! one, which has learnt no region yet.

use std::sync::atomic::Ordering;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use serde_json::{json, Value};
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::{service_var, TestEnv};

const REGION: &str = "eu-central-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imports_use_the_buckets_own_region_and_correct_a_wrong_one() {
    let env = TestEnv::new().await;
    let bucket = format!("tether-r-{}", env.id);
    let location = CreateBucketConfiguration::builder()
        .location_constraint(BucketLocationConstraint::EuCentral1)
        .build();
    env.s3
        .create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(location)
        .send()
        .await
        .expect("create");
    for i in 0..5 {
        let body = ByteStream::from(format!("image {i}").into_bytes());
        env.s3.put_object().bucket(&bucket).key(format!("eu/{i}.jpg")).body(body).send().await.expect("put");
    }
    let proxy = FaultProxy::start(
        &service_var("AWS_ENDPOINT_URL_S3"),
        Faults { bucket_region: Some(REGION), ..Faults::default() },
    )
    .await;
    let request = |dataset: &str, region: Option<&str>, mode: &str| -> Value {
        let mut request = env.request(dataset, &["eu/"]);
        request["source"]["bucket"] = json!(bucket);
        request["mode"] = json!(mode);
        if let Some(region) = region {
            request["source"]["region"] = json!(region);
        }
        request
    };
    let misdirected = || proxy.counts.misdirected.load(Ordering::Relaxed);
    let settings = [
        ("AWS_ENDPOINT_URL_S3", proxy.url()),
        ("TETHER_DESTINATION", format!("file://{}", env.destination_dir().display())),
    ];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;

    // No region: GetBucketLocation says eu-central-1 before anything is listed.
    let mut worker = env.spawn_worker_process(&settings);
    let status = env.wait_final(env.submit(&request("no-region", None, "link")).await).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(5)),
        "{status}"
    );
    assert_eq!(misdirected(), 0, "a request went to the wrong region");
    worker.kill().await;

    // A wrong region: S3 names the right one in an AuthorizationHeaderMalformed
    // body; the listing and every copy go there.
    let mut worker = env.spawn_worker_process(&settings);
    let status = env.wait_final(env.submit(&request("wrong-region", Some("ap-south-1"), "copy")).await).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(5)),
        "{status}"
    );
    assert_eq!(env.stored("wrong-region").await.values().filter(|(storage, _)| storage == "copy").count(), 5);
    let corrected = misdirected();
    assert!(corrected >= 1, "the wrong region was never tried: the test proves nothing");
    worker.kill().await;

    // us-east-1 named: a 301 with x-amz-bucket-region, corrected the same way.
    let mut worker = env.spawn_worker_process(&settings);
    let status = env.wait_final(env.submit(&request("us-east", Some("us-east-1"), "link")).await).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(5)),
        "{status}"
    );
    assert!(misdirected() > corrected, "the 301 was never answered: the test proves nothing");
    worker.kill().await;
    fleet.stop().await;
}
