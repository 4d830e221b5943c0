//! Rotating `session.secret`: a list whose first entry is current. Sessions made under the old
//! secret keep working after rotation (and are sealed again with the new one when used);
//! removing the old secret ends only those never used since.

use reqwest::Method;
use secrecy::SecretString;

use support::{TestApp, spawn_app, spawn_instance_with, test_secret};

async fn instance_with_secrets(app: &TestApp, secrets: &[String]) -> String {
    spawn_instance_with(app, |c| c.session.secrets = secrets.iter().map(|s| SecretString::from(s.clone())).collect())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_rotation_and_die_with_their_secret_unless_used_since() {
    let app = spawn_app().await;
    let (old, new) = (test_secret(), "the-next-session-secret-".repeat(3));
    let used = app.browser();
    used.login_as("alice").await;
    let idle = app.browser();
    idle.login_as("bob").await;
    let cookie_before = used.cookie("bff").expect("cookie");

    let rotated = instance_with_secrets(&app, &[new.clone(), old.clone()]).await;
    let used_rotated = used.at(&rotated);
    let res = used_rotated.user().await;
    assert_eq!(res.status(), 200, "an old cookie still opens after rotation");
    let cookie_after = used.cookie("bff").expect("cookie");
    assert_ne!(cookie_before, cookie_after, "the cookie was sealed again with the new secret");
    assert_eq!(used_rotated.api(Method::GET, "/api/echo").await.status(), 200);

    let only_new = instance_with_secrets(&app, &[new]).await;
    assert_eq!(used.at(&only_new).user().await.status(), 200, "used since rotation: sealed with the new secret");
    assert_eq!(used.at(&only_new).api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(idle.at(&only_new).user().await.status(), 401, "never used since: its old secret is gone");
}
