//! The administrators' pages for state services, as an administrator (a Matrix ID listed in
//! `portal.admins`) and as anyone else meets them.

use rocket::http::{ContentType, Status};
use tchap_portal::accounts::matrix::percent_encode as enc;
use tchap_portal::oidc::clients;

use crate::common::matrix::new_user;
use crate::common::{csrf_token, figment, log_in, title, unescape, TestApp, TestDb};

const PASSWORD: &str = "Correct-horse-42";

/// A portal whose administrator is a new Synapse user, logged in.
async fn as_admin() -> (TestApp, String) {
    let (_, admin) = new_user("chef", PASSWORD, Some("Dominique Admin [DINUM]")).await;
    let db = TestDb::new().await;
    let fig = figment(&db).merge(("portal.admins", vec![admin.clone()]));
    let app = TestApp::with_figment(db, fig).await;
    log_in(&app.client, &admin, PASSWORD).await;
    (app, admin)
}

#[rocket::async_test]
async fn only_administrators_reach_the_admin_pages() {
    let (app, _) = as_admin().await;
    let res = app.client.get("/").dispatch().await;
    let home = res.into_string().await.expect("home");
    assert!(
        home.contains("href=\"/admin/services\""),
        "administrators see the link"
    );
    assert_eq!(
        app.client.get("/admin/services").dispatch().await.status(),
        Status::Ok
    );

    // Logged out: to the login page, and back afterwards.
    let other = TestApp::new().await;
    let res = other.client.get("/admin/services").dispatch().await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(
        res.headers().get_one("Location"),
        Some("/connexion?next=%2Fadmin%2Fservices")
    );
    // An agent who is not an administrator: 403, and no link.
    let (_, agent) = new_user("agent", PASSWORD, None).await;
    log_in(&other.client, &agent, PASSWORD).await;
    let res = other.client.get("/admin/services").dispatch().await;
    assert_eq!(res.status(), Status::Forbidden);
    let home = other
        .client
        .get("/")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("home");
    assert!(!home.contains("href=\"/admin/services\""));
    let res = other
        .client
        .post("/admin/services/nouveau")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={}&name=X&redirect_uris=https%3A%2F%2Fx.gouv.fr%2Fcb&kind=confidential&subject_type=pairwise&id_token_alg=RS256",
            csrf_token(&home)
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Forbidden);
    let mut conn = other.db.conn().await;
    assert!(clients::list(&mut conn).await.expect("list").is_empty());
}

#[rocket::async_test]
async fn an_administrator_registers_a_service_sees_its_secret_once_renews_and_removes_it() {
    let (app, _) = as_admin().await;
    let page = app
        .client
        .get("/admin/services/nouveau")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("form");
    assert_eq!(title(&page), "Enregistrer un service — Portail Tchap");
    let token = csrf_token(&page);

    // Bad input: messages tied to each field, the input kept.
    let res = app
        .client
        .post("/admin/services/nouveau")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={token}&name=%20&redirect_uris={}&post_logout_redirect_uris={}&kind=confidential&subject_type=pairwise&id_token_alg=HS256",
            enc("http://demarches.example.gouv.fr/cb"),
            enc("https://demarches.example.gouv.fr/bye#x")
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::UnprocessableEntity);
    let html = unescape(&res.into_string().await.expect("page"));
    assert!(title(&html).starts_with("Erreur : Enregistrer un service"));
    for (field, message) in [
        ("name", "Saisissez le nom du service."),
        (
            "redirect_uris",
            "Chaque adresse doit être une URL https complète",
        ),
        (
            "post_logout_redirect_uris",
            "Chaque adresse doit être une URL https complète",
        ),
        ("id_token_alg", "Choisissez RS256 ou ES256."),
    ] {
        assert!(
            html.contains(&format!("href=\"#{field}\"")),
            "summary links to {field}"
        );
        assert!(
            html.contains(&format!("id=\"{field}-erreur\">{message}")),
            "{field}: {message}"
        );
    }
    assert!(
        html.contains(">http://demarches.example.gouv.fr/cb</textarea>"),
        "input kept"
    );

    // Good input: the page shows the client ID and the secret, once.
    let res = app
        .client
        .post("/admin/services/nouveau")
        .header(ContentType::Form)
        .body(format!(
            "csrf_token={token}&name={}&redirect_uris={}&post_logout_redirect_uris={}&kind=confidential&subject_type=public&id_token_alg=ES256&userinfo_signed=true",
            enc("Démarches simplifiées"),
            enc("https://demarches.example.gouv.fr/cb\r\nhttps://demarches.example.gouv.fr/cb2\r\n"),
            enc("https://demarches.example.gouv.fr/bye")
        ))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let html = unescape(&res.into_string().await.expect("page"));
    let mut conn = app.db.conn().await;
    let all = clients::list(&mut conn).await.expect("list");
    assert_eq!(all.len(), 1);
    let c = &all[0];
    assert_eq!(c.name, "Démarches simplifiées");
    assert_eq!(
        c.redirect_uris().collect::<Vec<_>>(),
        [
            "https://demarches.example.gouv.fr/cb",
            "https://demarches.example.gouv.fr/cb2"
        ]
    );
    assert_eq!(
        (
            c.subject_type.as_str(),
            c.id_token_alg.as_str(),
            c.userinfo_signed,
            c.public
        ),
        ("public", "ES256", true, false)
    );
    let secret_marker = "class=\"portal-secret\">";
    let at = html.find(secret_marker).expect("the secret is shown") + secret_marker.len();
    let secret = html[at..].split('<').next().expect("secret").to_owned();
    assert!(
        c.check_secret(&secret),
        "the secret shown is the one stored (hashed)"
    );
    assert!(html.contains(&c.client_id));

    // The service's page never shows it again; renewing gives a new one, the old stops working.
    let page = app
        .client
        .get(format!("/admin/services/{}", c.client_id))
        .dispatch()
        .await
        .into_string()
        .await
        .expect("page");
    assert!(!page.contains(&secret) && !page.contains(secret_marker));
    let res = app
        .client
        .post(format!("/admin/services/{}/secret", c.client_id))
        .header(ContentType::Form)
        .body(format!("csrf_token={}", csrf_token(&page)))
        .dispatch()
        .await;
    let html = unescape(&res.into_string().await.expect("page"));
    let at = html.find(secret_marker).expect("a new secret") + secret_marker.len();
    let renewed = html[at..].split('<').next().expect("secret").to_owned();
    let c = clients::find(&mut conn, &c.client_id)
        .await
        .expect("q")
        .expect("client");
    assert!(c.check_secret(&renewed) && !c.check_secret(&secret));

    // Listed, then removed after a confirmation page.
    let list = app
        .client
        .get("/admin/services")
        .dispatch()
        .await
        .into_string()
        .await
        .expect("list");
    assert!(unescape(&list).contains("Démarches simplifiées"));
    let confirm = app
        .client
        .get(format!("/admin/services/{}/supprimer", c.client_id))
        .dispatch()
        .await
        .into_string()
        .await
        .expect("confirm");
    assert_eq!(
        title(&unescape(&confirm)),
        "Supprimer le service Démarches simplifiées ? — Portail Tchap"
    );
    let res = app
        .client
        .post(format!("/admin/services/{}/supprimer", c.client_id))
        .header(ContentType::Form)
        .body(format!("csrf_token={}", csrf_token(&confirm)))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    assert!(clients::find(&mut conn, &c.client_id)
        .await
        .expect("q")
        .is_none());
    let res = app
        .client
        .get(format!("/admin/services/{}", c.client_id))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::NotFound);
}
