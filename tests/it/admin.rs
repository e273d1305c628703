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

/// The services registered by administrators (not the portal's own AudioConf client).
async fn registered(conn: &mut diesel_async::AsyncPgConnection) -> Vec<clients::Client> {
    clients::list(conn)
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.client_id != tchap_portal::audioconf::tchap::DEV_CLIENT_ID)
        .collect()
}

#[rocket::async_test]
async fn only_administrators_reach_the_admin_pages() {
    let (app, _) = as_admin().await;
    let res = app.client.get("/").dispatch().await;
    let home = res.into_string().await.expect("home");
    assert!(
        home.contains("href=\"/admin\""),
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
    assert!(!home.contains("href=\"/admin\""));
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
    assert!(registered(&mut conn).await.is_empty());
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
    let all = registered(&mut conn).await;
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

async fn post_form(app: &TestApp, path: &str, body: String) -> (Status, Option<String>, String) {
    crate::common::post_form(&app.client, path, body).await
}

async fn page(app: &TestApp, path: &str) -> (Status, String) {
    let (status, _, body) = crate::common::get(&app.client, path).await;
    (status, body)
}

#[rocket::async_test]
async fn administrators_allow_and_remove_audioconf_domains_and_bookings_follow() {
    let (app, admin) = as_admin().await;
    let (status, hub) = page(&app, "/admin").await;
    assert_eq!(status, Status::Ok);
    assert!(hub.contains("href=\"/admin/audioconf/domaines\""));
    let (status, list) = page(&app, "/admin/audioconf/domaines").await;
    assert_eq!(status, Status::Ok);
    assert_eq!(
        title(&list),
        "AudioConf : domaines autorisés — Portail Tchap"
    );
    assert!(
        list.contains("<code>.gouv.fr</code>"),
        "the settings' rule is listed"
    );

    // Bad input: a message tied to the field, the input kept.
    for (typed, message) in [
        ("", "Saisissez un domaine"),
        ("pas un domaine", "Ce n’est pas un domaine"),
        (".gouv.fr", "déjà autorisé par les réglages"),
    ] {
        let (status, _, page) = post_form(
            &app,
            "/admin/audioconf/domaines",
            format!("csrf_token={}&rule={}", csrf_token(&list), enc(typed)),
        )
        .await;
        assert_eq!(status, Status::UnprocessableEntity, "{typed}");
        assert!(title(&page).starts_with("Erreur"), "{typed}");
        assert!(page.contains(message), "{typed}: {message}");
        assert!(page.contains("aria-describedby=\"rule-"), "{typed}");
        assert!(page.contains(&format!("value=\"{typed}\"")), "{typed} kept");
    }

    // Before: a city's address is refused at booking.
    let (_, form) = page(&app, "/audioconf").await;
    let booking = |f: &str| {
        format!(
            "csrf_token={}&email=agent%40mairie.ville-test.fr&when=duration&duration=60",
            csrf_token(f)
        )
    };
    let (status, _, _) = post_form(&app, "/audioconf", booking(&form)).await;
    assert_eq!(status, Status::UnprocessableEntity);

    // Added (as typed, with a capital and an @), then listed with who added it.
    let (status, location, _) = post_form(
        &app,
        "/admin/audioconf/domaines",
        format!("csrf_token={}&rule=%40.Ville-Test.fr", csrf_token(&list)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let location = location.expect("back to the list");
    let (_, list) = page(&app, &location).await;
    assert!(list.contains("Le domaine .ville-test.fr est autorisé."));
    assert!(list.contains("<code>.ville-test.fr</code>"));
    let mut conn = app.db.conn().await;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use tchap_portal::db::schema::audioconf_domains as d;
    let by: String = d::table
        .filter(d::rule.eq(".ville-test.fr"))
        .select(d::added_by)
        .first(&mut conn)
        .await
        .expect("stored");
    assert_eq!(by, admin);
    let (status, _, page_) = post_form(
        &app,
        "/admin/audioconf/domaines",
        format!("csrf_token={}&rule=.ville-test.fr", csrf_token(&list)),
    )
    .await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(page_.contains("déjà dans la liste"));

    // Now the booking goes through (no number configured here: the form says the service is
    // unavailable, but the address itself is no longer refused).
    let (_, form) = page(&app, "/audioconf").await;
    let (_, _, answer) = post_form(&app, "/audioconf", booking(&form)).await;
    assert!(!answer.contains("ne peuvent pas réserver"));

    // Removed: refused again.
    let (status, location, _) = post_form(
        &app,
        "/admin/audioconf/domaines/retirer",
        format!("csrf_token={}&rule=.ville-test.fr", csrf_token(&list)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let (_, list) = page(&app, &location.expect("back")).await;
    assert!(list.contains("Le domaine .ville-test.fr n’est plus autorisé."));
    let (status, _, _) = post_form(
        &app,
        "/admin/audioconf/domaines/retirer",
        format!("csrf_token={}&rule=.ville-test.fr", csrf_token(&list)),
    )
    .await;
    assert_eq!(status, Status::NotFound, "removing it twice");
    assert!(!list.contains("<code>.ville-test.fr</code>"));
    let (_, form) = page(&app, "/audioconf").await;
    let (_, _, answer) = post_form(&app, "/audioconf", booking(&form)).await;
    assert!(answer.contains("ne peuvent pas réserver"));

    // Not for agents: 403, and their POSTs change nothing.
    let other = TestApp::new().await;
    let (_, agent) = new_user("agent", PASSWORD, None).await;
    log_in(&other.client, &agent, PASSWORD).await;
    let (status, _) = page(&other, "/admin/audioconf/domaines").await;
    assert_eq!(status, Status::Forbidden);
    let (_, home) = page(&other, "/").await;
    let (status, _, _) = post_form(
        &other,
        "/admin/audioconf/domaines",
        format!("csrf_token={}&rule=evil.example", csrf_token(&home)),
    )
    .await;
    assert_eq!(status, Status::Forbidden);
}
