//! Web plumbing as a visitor meets it: pages, language, security headers, error pages, CSRF, health.

use rocket::http::{ContentType, Header, Method, Status};
use tchap_portal::web::csrf;
use tchap_portal::web::headers::CSP;

use crate::common::{title, unescape, TestApp};

fn assert_security_headers(res: &rocket::local::asynchronous::LocalResponse<'_>, what: &str) {
    let h = res.headers();
    assert_eq!(
        h.get_one("Content-Security-Policy"),
        Some(CSP),
        "{what}: CSP"
    );
    assert!(CSP.contains("script-src 'none'"));
    assert_eq!(
        h.get_one("X-Content-Type-Options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(h.get_one("Referrer-Policy"), Some("same-origin"), "{what}");
    assert!(
        h.get_one("Permissions-Policy")
            .is_some_and(|p| p.contains("camera=()")),
        "{what}"
    );
    assert_eq!(h.get_one("X-Frame-Options"), Some("DENY"), "{what}");
}

#[rocket::async_test]
async fn home_is_a_dsfr_page_in_french_with_the_three_services() {
    let app = TestApp::new().await;
    let res = app.client.get("/").dispatch().await;
    assert_eq!(res.status(), Status::Ok);
    assert_security_headers(&res, "home");
    let html = res.into_string().await.expect("body");
    assert!(html.starts_with("<!doctype html>\n<html lang=\"fr\""));
    assert!(!html.to_lowercase().contains("<script"));
    assert_eq!(title(&html), "Accueil — Portail Tchap");
    assert_eq!(html.matches("<h1").count(), 1);
    for service in ["Tchap Identité", "AudioConf", "Tchap Web léger"] {
        assert!(html.contains(service), "{service} is listed");
    }
    // Each service card leads to it, and the main menu to every section.
    for (href, service) in [
        ("/mes-services", "Tchap Identité"),
        ("/audioconf", "AudioConf"),
        ("/discussions", "Tchap Web léger"),
    ] {
        assert!(
            html.matches(&format!("href=\"{href}\"")).count() >= 2,
            "{service}: a card link and a menu entry"
        );
    }
    assert!(html.contains("<nav class=\"fr-nav\" id=\"menu\""));
    assert!(html.contains("href=\"/\" aria-current=\"page\""));
    assert!(!html.contains("Pas encore disponible"));
    for link in [
        "href=\"#contenu\"",
        "href=\"#pied-de-page\"",
        "href=\"/accessibilite\"",
        "href=\"/mentions-legales\"",
        "href=\"/plan-du-site\"",
        "/public/dsfr/dsfr.min.css",
    ] {
        assert!(html.contains(link), "{link}");
    }
}

#[rocket::async_test]
async fn every_linked_page_exists_with_its_own_title() {
    let app = TestApp::new().await;
    let mut titles = Vec::new();
    for path in ["/", "/accessibilite", "/mentions-legales", "/plan-du-site"] {
        let res = app.client.get(path).dispatch().await;
        assert_eq!(res.status(), Status::Ok, "{path}");
        let html = res.into_string().await.expect("body");
        assert_eq!(html.matches("<h1").count(), 1, "{path}: one h1");
        titles.push(title(&html));
        for href in html
            .split("href=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            if href.starts_with('/') && !href.starts_with("/langue/") {
                let res = app.client.get(href.to_owned()).dispatch().await;
                // A page for logged-in agents sends visitors to the login first.
                let to_login = res.status() == Status::SeeOther
                    && res
                        .headers()
                        .get_one("Location")
                        .is_some_and(|l| l.starts_with("/connexion?"));
                assert!(
                    res.status() == Status::Ok || to_login,
                    "{path} links to {href}: {}",
                    res.status()
                );
            }
        }
    }
    let mut unique = titles.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), titles.len(), "titles are unique: {titles:?}");
}

#[rocket::async_test]
async fn language_follows_the_switch_then_the_browser() {
    let app = TestApp::new().await;
    let html = app
        .client
        .get("/")
        .header(Header::new("Accept-Language", "en-GB,en;q=0.9,fr;q=0.5"))
        .dispatch()
        .await
        .into_string()
        .await
        .expect("body");
    assert!(html.contains("<html lang=\"en\""));
    assert_eq!(title(&html), "Home — Tchap Portal");

    let res = app
        .client
        .get("/langue/fr?next=/plan-du-site")
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(res.headers().get_one("Location"), Some("/plan-du-site"));
    // The cookie now wins over the browser's preference.
    let html = app
        .client
        .get("/plan-du-site")
        .header(Header::new("Accept-Language", "en"))
        .dispatch()
        .await
        .into_string()
        .await
        .expect("body");
    assert!(html.contains("<html lang=\"fr\""));
    assert!(html.contains("Plan du site"));

    // The switch never sends anyone off-site.
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let res = app
            .client
            .get(format!("/langue/en?next={}", next.replace('/', "%2F")))
            .dispatch()
            .await;
        assert_eq!(res.headers().get_one("Location"), Some("/"), "{next}");
    }
}

#[rocket::async_test]
async fn error_pages_are_dsfr_pages_in_the_visitors_language() {
    let app = TestApp::new().await;
    let expected = [
        (400, "Requête incorrecte", "Bad request"),
        (403, "Accès refusé", "Access denied"),
        (404, "Page non trouvée", "Page not found"),
        (422, "Données invalides", "Invalid data"),
        (429, "Trop de demandes", "Too many requests"),
        (500, "Erreur inattendue", "Unexpected error"),
        (
            503,
            "Service momentanément indisponible",
            "Service temporarily unavailable",
        ),
    ];
    for (code, fr, en) in expected {
        for (lang, heading) in [("fr", fr), ("en", en)] {
            let res = app
                .client
                .get(format!("/test/status/{code}"))
                .header(Header::new("Accept-Language", lang))
                .dispatch()
                .await;
            assert_eq!(res.status().code, code);
            assert_security_headers(&res, &format!("error {code}"));
            assert_eq!(res.content_type(), Some(ContentType::HTML), "{code}");
            let html = res.into_string().await.expect("body");
            assert!(
                html.contains(&format!("<h1>{heading}</h1>")),
                "{code} {lang}: {html}"
            );
            assert!(html.contains("class=\"fr-header\""), "{code}: DSFR layout");
            assert!(html.contains(&format!("lang=\"{lang}\"")));
        }
    }
    let res = app.client.get("/no/such/page").dispatch().await;
    assert_eq!(res.status(), Status::NotFound);
    assert!(res
        .into_string()
        .await
        .expect("body")
        .contains("Page non trouvée"));
}

#[rocket::async_test]
async fn every_post_route_refuses_a_missing_or_wrong_csrf_token() {
    let app = TestApp::new().await;
    let posts: Vec<String> = app
        .client
        .rocket()
        .routes()
        .filter(|r| r.method == Method::Post)
        .map(|r| r.uri.origin.path().to_string())
        .filter(|p| !csrf::EXEMPT.contains(&p.as_str()))
        .collect();
    assert!(!posts.is_empty(), "the portal has POST forms to protect");
    for template in posts {
        // Dynamic segments get a plausible value.
        let path: String = template
            .split('/')
            .map(|seg| if seg.starts_with('<') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for body in ["", "csrf_token=&a=b", "csrf_token=1.forged&a=b"] {
            let res = app
                .client
                .post(path.clone())
                .header(ContentType::Form)
                .body(body)
                .dispatch()
                .await;
            assert_eq!(res.status(), Status::Forbidden, "POST {path} with `{body}`");
            let html = res.into_string().await.expect("body");
            assert!(
                html.contains("Accès refusé") && html.contains("fr-header"),
                "POST {path}: DSFR 403 page"
            );
        }
    }
}

#[rocket::async_test]
async fn health_and_readiness_follow_the_database() {
    let app = TestApp::new().await;
    assert_eq!(
        app.client.get("/healthz").dispatch().await.status(),
        Status::Ok
    );
    assert_eq!(
        app.client.get("/readyz").dispatch().await.status(),
        Status::Ok
    );
    // The database goes away (its connections are cut): the portal is alive but not ready.
    app.db.drop_now().await;
    let res = app.client.get("/readyz").dispatch().await;
    assert_eq!(res.status(), Status::ServiceUnavailable);
    assert_eq!(
        app.client.get("/healthz").dispatch().await.status(),
        Status::Ok
    );
}

/// A pooled connection the database closed (a restart, an idle timeout) is replaced before it is
/// handed out again, although connections are not checked with a query first: the next request
/// does not fail.
#[rocket::async_test]
async fn a_connection_the_database_closed_is_replaced_before_use() {
    use diesel_async::RunQueryDsl;
    let db = crate::common::TestDb::new().await;
    let fig = crate::common::figment(&db).merge(("portal.db.pool_size", 1));
    let app = TestApp::with_figment(db, fig).await;
    assert_eq!(
        app.client.get("/readyz").dispatch().await.status(),
        Status::Ok
    );
    let mut admin = app.db.conn().await;
    let cut: Vec<bool> = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) AS cut FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .load::<Cut>(&mut admin)
    .await
    .expect("terminate the pool's connection")
    .into_iter()
    .map(|c| c.cut)
    .collect();
    assert_eq!(cut, vec![true], "the pool's one connection was cut");
    rocket::tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        app.client.get("/readyz").dispatch().await.status(),
        Status::Ok,
        "found closed and replaced"
    );
}

#[derive(diesel::QueryableByName)]
struct Cut {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    cut: bool,
}

#[rocket::async_test]
async fn metrics_are_for_operators_only() {
    let app = TestApp::new().await;
    app.client.get("/").dispatch().await;
    let res = app
        .client
        .get("/metrics")
        .remote("203.0.113.9:5000".parse().expect("addr"))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Forbidden);
    let res = app
        .client
        .get("/metrics")
        .remote("127.0.0.1:5000".parse().expect("addr"))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let text = res.into_string().await.expect("body");
    assert!(
        text.contains("portal_http_requests_total{method=\"GET\",route=\"/\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("portal_http_request_duration_seconds_bucket"));
}

#[rocket::async_test]
async fn static_files_are_served_and_cached() {
    let app = TestApp::new().await;
    let res = app.client.get("/public/css/portal.css").dispatch().await;
    assert_eq!(res.status(), Status::Ok);
    assert_eq!(
        res.headers().get_one("Cache-Control"),
        Some("public, max-age=86400")
    );
    let res = app.client.get("/public/dsfr/dsfr.min.css").dispatch().await;
    assert_eq!(
        res.status(),
        Status::Ok,
        "scripts/vendor installed the DSFR"
    );
}

/// Every `t(key="…")` used in a template exists in both catalogs, and both have the same keys.
#[test]
fn translation_catalogs_are_complete() {
    use tchap_portal::web::i18n::{catalog, Lang};
    let fr = catalog(Lang::Fr);
    let en = catalog(Lang::En);
    let only_fr: Vec<_> = fr.keys().filter(|k| !en.contains_key(*k)).collect();
    let only_en: Vec<_> = en.keys().filter(|k| !fr.contains_key(*k)).collect();
    assert!(
        only_fr.is_empty() && only_en.is_empty(),
        "missing in en: {only_fr:?}; missing in fr: {only_en:?}"
    );
    for (k, v) in fr.iter().chain(en.iter()) {
        assert!(!v.trim().is_empty(), "{k} is empty");
    }
    let mut missing = Vec::new();
    for file in template_files() {
        let src = std::fs::read_to_string(&file).expect("template");
        for rest in src.split("t(key=\"").skip(1) {
            let Some((key, after)) = rest.split_once('"') else {
                continue;
            };
            // `t(key="home." ~ service ~ ".title")`: a prefix, completed at render time.
            let known = if after.trim_start().starts_with('~') {
                fr.keys().any(|k| k.starts_with(key))
            } else {
                fr.contains_key(key)
            };
            if !known {
                missing.push(format!("{}: {key}", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys used but not translated: {missing:?}"
    );
}

pub fn template_files() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("templates dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "tera") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("templates"), &mut out);
    out.sort();
    out
}

/// Every page template renders in both languages with sample data; a template without a sample
/// here fails the test, so new templates are covered.
#[rocket::async_test]
async fn every_template_renders_with_sample_data() {
    use rocket_dyn_templates::Template;
    use serde_json::json;
    use tchap_portal::mail::Mailer;

    let app = TestApp::new().await;
    let user =
        json!({"matrix_user_id": "@alice:localhost", "display_name": "Alice Martin [DINUM]"});
    let samples: Vec<(&str, serde_json::Value)> = vec![
        ("home", json!({})),
        ("pages/accessibility", json!({})),
        ("pages/legal", json!({})),
        ("pages/sitemap", json!({})),
        ("errors/error", json!({"status": 404, "key": "error.404"})),
        (
            "accounts/login",
            json!({"identifier": "alice@example.gouv.fr", "next": "/", "form_errors": true,
                   "errors": {"form": "Tchap ne répond pas", "fields": {"password": "Saisissez votre mot de passe."}}}),
        ),
        (
            "oidc/consent",
            json!({"client_name": "Démarches", "client_origin": "https://rp.example.gouv.fr",
                   "claims": [["Adresse électronique", "alice@example.gouv.fr"]], "authz": "client_id=x&scope=openid"}),
        ),
        ("oidc/error", json!({"message_key": "oidc.error.client"})),
        (
            "oidc/logout",
            json!({"client_name": "Démarches", "client_id": "abc", "post_logout_redirect_uri": "https://rp.example.gouv.fr/bye", "state": "s1"}),
        ),
        ("oidc/logged_out", json!({"client_name": "Démarches"})),
        (
            "admin/clients",
            json!({"removed": "Démarches", "clients": [{"client_id": "abc", "name": "Démarches", "public": false, "created": "01/11/2026 10:00"}]}),
        ),
        (
            "admin/client_new",
            json!({"form": {"name": "", "redirect_uris": "http://x", "post_logout_redirect_uris": "", "kind": "confidential",
                   "subject_type": "pairwise", "id_token_alg": "RS256", "userinfo_signed": false},
                   "errors": {"fields": {"redirect_uris": "Chaque adresse…", "kind": "Choisissez"}}, "form_errors": true}),
        ),
        (
            "admin/client",
            json!({"created": true, "secret": "s3cr3t", "client": {"client_id": "abc", "name": "Démarches", "public": false,
                   "redirect_uris": ["https://x/cb"], "post_logout_redirect_uris": [], "subject_type": "pairwise",
                   "id_token_alg": "RS256", "userinfo_signed": true, "created": "01/11/2026 10:00"}}),
        ),
        (
            "audioconf/book",
            json!({"form": {"email": "a@b.gouv.fr", "when": "day", "day": "2026-11-21", "duration": "60"},
                   "errors": {"fields": {"email": "Saisissez", "day": "Choisissez", "duration": "Choisissez", "when": "Choisissez"}},
                   "form_errors": true, "days": [{"value": "2026-11-21", "label": "Aujourd’hui"}],
                   "durations": [{"value": "60", "label": "1 h"}], "available": false, "link_ttl": 60, "tchap": true}),
        ),
        ("admin/index", json!({})),
        (
            "chat/rooms",
            json!({"invites": [{"room_id": "!a:x", "name": "Invitation", "kind": "private", "encrypted": false, "invite": true, "href": "/discussions/!a:x",
                                "inviter": "@bob:x", "unread": 0, "highlight": 0, "preview": null, "preview_encrypted": false,
                                "sender": null, "when": null}],
                   "rooms": [{"room_id": "!b:x", "name": "Équipe", "kind": "forum", "encrypted": true, "invite": false, "href": "/discussions/!b:x",
                              "inviter": null, "unread": 2, "highlight": 1, "preview": "Bonjour", "preview_encrypted": false,
                              "sender": "bob", "when": "10:00"}],
                   "total": 120, "page": 2, "pages": 3, "previous": 1, "next": 3, "done": "left"}),
        ),
        ("chat/unavailable", json!({"retry": "/discussions"})),
        (
            "chat/room",
            json!({"room": {"id": "!a:x", "path": "/discussions/!a:x", "name": "Salon", "kind": "private", "encrypted": false},
                   "items": [
                       {"id": "$1", "day": "samedi 21 novembre 2026", "sender": "Bob", "sender_id": "@bob:x", "mine": false, "time": "10:00",
                        "datetime": "2026-11-21T09:00:00+00:00", "kind": "text", "html": "<p>Bonjour</p>", "text": "", "edited": true,
                        "reply": {"sender": "Alice", "text": "Question"}, "media": null, "reply_href": "/discussions/!a:x?repondre=$1#envoyer"},
                       {"id": "$2", "day": null, "sender": "Bob", "sender_id": "@bob:x", "mine": false, "time": "10:01",
                        "datetime": "2026-11-21T09:01:00+00:00", "kind": "image", "html": "", "text": "", "edited": false, "reply": null,
                        "media": {"href": "/discussions/media/x/a?nom=a.png", "thumbnail": "/discussions/media/x/a?vignette=1", "name": "a.png", "size": "1,0 ko"}},
                       {"id": "$3", "day": null, "sender": "Bob", "sender_id": "@bob:x", "mine": true, "time": "10:02",
                        "datetime": "2026-11-21T09:02:00+00:00", "kind": "event", "html": "", "text": "Bob a rejoint le salon", "edited": false,
                        "reply": null, "media": null}],
                   "older": "/discussions/!a:x?avant=t1", "latest": true, "auto": true, "auto_secs": 30, "done": "invite",
                   "compose": {"body": "", "reply_to": "$1", "nonce": "n", "file_nonce": "f", "errors": {"fields": {}, "form": null}},
                   "replying": {"sender": "Bob", "text": "Bonjour"}, "form_errors": false,
                   "audioconf": {"enabled": true, "lines": [{"number": "+33189000000", "number_national": "01 89 00 00 00",
                       "pin": "123456789", "pin_grouped": "123 456 789", "tel": "tel:+33189000000,,123456789%23", "all_day": true,
                       "day": "samedi 21 novembre 2026", "start": "10:00", "end": "23:59", "participant_limit": 50,
                       "conference": "abc", "mine": true}]}}),
        ),
        (
            "chat/unsent",
            json!({"room_path": "/discussions/!a:x", "compose": {"body": "Bonjour", "reply_to": null, "nonce": "n"}}),
        ),
        (
            "chat/leave",
            json!({"room": {"path": "/discussions/!a:x", "id": "!a:x", "name": "Salon", "kind": "forum"}}),
        ),
        (
            "chat/invite",
            json!({"room": {"path": "/discussions/!a:x", "id": "!a:x", "name": "Salon"}, "contact": "a@b.fr",
                   "errors": {"fields": {"contact": "Aucun compte"}, "form": null}}),
        ),
        (
            "chat/direct",
            json!({"contact": "", "errors": {"fields": {}, "form": null}}),
        ),
        (
            "chat/create",
            json!({"form": {"name": "", "topic": "", "kind": "private"}, "errors": {"fields": {"name": "Donnez un nom"}, "form": null}}),
        ),
        (
            "chat/join",
            json!({"q": "forum", "searched": true, "salon": "", "errors": {"fields": {}, "form": null},
                   "results": [{"room_id": "!f:x", "name": "Forum", "alias": "#forum:x", "topic": "Sujet", "members": 3}]}),
        ),
        (
            "admin/audioconf_domains",
            json!({"configured": [".gouv.fr"], "stored": ["ville-paris.fr"], "form": {"rule": "pas un domaine"},
                   "errors": {"fields": {"rule": "Ce n’est pas un domaine"}}, "form_errors": true,
                   "done": {"what": "added", "rule": "ville-paris.fr"}}),
        ),
        (
            "audioconf/stats",
            json!({"bars": [{"day": "samedi 21 novembre", "day_iso": "2026-11-21", "n": 3, "x": 2, "y": 20, "width": 16, "height": 180}],
                   "total": 3, "busiest": {"day": "samedi 21 novembre", "n": 3}, "max": 3, "first": "jeudi 23 octobre",
                   "last": "samedi 21 novembre", "width": 600, "height": 200, "show_top": true,
                   "top": [{"domain": "numerique.gouv.fr", "n": 3}]}),
        ),
        (
            "audioconf/sent",
            json!({"email": "a@b.gouv.fr", "ttl": 60, "choice": "1 h"}),
        ),
        (
            "audioconf/confirm",
            json!({"token": "tok", "email": "a@b.gouv.fr", "choice": "1 h", "all_day": false}),
        ),
        (
            "audioconf/link_error",
            json!({"message_key": "audioconf.exhausted", "retry_token": "tok"}),
        ),
        (
            "audioconf/details",
            json!({"number": "+33189000000", "number_national": "01 89 00 00 00", "pin": "123456789", "pin_grouped": "123 456 789", "tel": "tel:+33189000000,,123456789%23", "all_day": true, "day": "samedi 21 novembre 2026", "start": "10:00", "end": "23:59", "participant_limit": 50, "email": "a@b.gouv.fr"}),
        ),
        (
            "audioconf/cancel",
            json!({"number": "+33189000000", "number_national": "01 89 00 00 00", "pin": "123456789", "pin_grouped": "123 456 789", "tel": "tel:+33189000000,,123456789%23", "all_day": true, "day": "samedi 21 novembre 2026", "start": "10:00", "end": "23:59", "participant_limit": 50, "token": "tok"}),
        ),
        (
            "audioconf/cancelled",
            json!({"number_national": "01 89 00 00 00"}),
        ),
        (
            "admin/client_remove",
            json!({"client": {"client_id": "abc", "name": "Démarches"}}),
        ),
        (
            "oidc/services",
            json!({"revoked": "Démarches", "services": [{"client_id": "abc", "name": "Démarches", "origin": "https://rp.example.gouv.fr",
                   "claims": ["Prénom"], "first": "01/11/2026 10:00", "last": "02/11/2026 11:00",
                   "history": [{"date": "02/11/2026 11:00", "claims": ["Identifiant propre à ce service", "Prénom"]}]}]}),
        ),
    ];
    let layouts = [
        "base",
        "partials/header",
        "partials/footer",
        "partials/form",
        "audioconf/line",
    ];
    // Each mail template, and a value from the sample that both of its parts must show.
    let mail_templates = [
        ("test", "alice@example.gouv.fr"),
        ("audioconf_link", "x&#x2F;l"),
        ("audioconf_details", "123 456 789"),
        ("audioconf_cancelled", "01 89 00 00 00"),
    ];
    let mail_samples = json!({"to": "alice@example.gouv.fr", "link": "http://x/l", "ttl": 60, "choice": "1 h",
        "all_day": false, "number": "+33189000000", "number_national": "01 89 00 00 00", "pin": "123456789", "pin_grouped": "123 456 789", "tel": "tel:+33189000000,,123456789%23", "all_day": true, "day": "samedi 21 novembre 2026", "start": "10:00", "end": "23:59", "participant_limit": 50, "cancel_url": "http://x/c"});

    for file in template_files() {
        let name = file
            .strip_prefix("templates")
            .expect("under templates")
            .to_string_lossy()
            .trim_start_matches('/')
            .split('.')
            .next()
            .expect("name")
            .to_owned();
        let covered = samples.iter().any(|(n, _)| *n == name)
            || layouts.contains(&name.as_str())
            || name == "email/html/base"
            || mail_templates.iter().any(|(m, _)| {
                name == format!("email/html/{m}") || name == format!("email/text/{m}")
            });
        assert!(covered, "template {name} has no sample in this test");
    }
    for (name, page) in &samples {
        for lang in ["fr", "en"] {
            for u in [serde_json::Value::Null, user.clone()] {
                let mut ctx =
                    json!({"lang": lang, "csrf_token": "t0k3n", "path": "/x?y=1", "user": u});
                tchap_portal::web::page::merge(&mut ctx, page.clone());
                let html = Template::show(app.client.rocket(), *name, ctx)
                    .unwrap_or_else(|| panic!("{name} ({lang}) renders"));
                assert!(html.contains(&format!("<html lang=\"{lang}\"")), "{name}");
                assert!(!html.to_lowercase().contains("<script"), "{name}");
            }
        }
    }
    let mailer = app.client.rocket().state::<Mailer>().expect("mailer");
    for (m, shown) in mail_templates {
        for lang in tchap_portal::web::i18n::Lang::ALL {
            let html = mailer
                .render(&format!("email/html/{m}"), lang, &mail_samples)
                .expect("html part");
            let text = mailer
                .render(&format!("email/text/{m}"), lang, &mail_samples)
                .expect("text part");
            assert!(
                html.contains(shown) && unescape(&text).contains(&unescape(shown)),
                "{m} ({lang:?}) shows {shown}"
            );
        }
    }
}

/// Values shown in pages are escaped: a user's display name cannot inject markup.
#[rocket::async_test]
async fn page_values_are_html_escaped() {
    use rocket_dyn_templates::Template;
    let app = TestApp::new().await;
    let ctx = serde_json::json!({"lang": "fr", "csrf_token": "", "path": "/\"><b>x",
        "user": {"matrix_user_id": "@a:b", "display_name": "<img src=x onerror=alert(1)>"}});
    let html = Template::show(app.client.rocket(), "home", ctx).expect("renders");
    assert!(!html.contains("<img src=x"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!html.contains("\"><b>x"));
}

/// Values a hostile visitor sends: empty, huge, NUL and controls, unicode oddities, markup,
/// numbers out of range, other servers' identifiers, invalid percent-encodings.
fn hostile_values() -> Vec<String> {
    vec![
        String::new(),
        "x".repeat(20_000),
        "\0".into(),
        "a\0b\u{1}c\u{7f}\u{85}".into(),
        "\t\r\n/\t/evil.example".into(),
        "é🎉\u{202e}\u{FEFF}\u{FFFE}\u{10FFFF}".into(),
        "<script>alert(1)</script>\"'&".into(),
        "'; DROP TABLE sessions;--".into(),
        "../../../etc/passwd".into(),
        "-1".into(),
        "99999999999999999999999".into(),
        "2026-02-31".into(),
        "@x:evil.example".into(),
        "!room:evil.example".into(),
        "mxc://evil.example/../x".into(),
        "//evil.example".into(),
    ]
}

/// Every field name the portal's forms take: a hostile body fills them all.
const FIELDS: &[&str] = &[
    "identifier",
    "password",
    "next",
    "email",
    "when",
    "day",
    "duration",
    "token",
    "rule",
    "name",
    "redirect_uris",
    "post_logout_redirect_uris",
    "kind",
    "subject_type",
    "id_token_alg",
    "userinfo_signed",
    "salon",
    "topic",
    "contact",
    "jour",
    "conference",
    "nonce",
    "message",
    "reply_to",
    "room_id",
    "decision",
    "authz",
    "client_id",
    "client_secret",
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "access_token",
    "token_type_hint",
    "id_token_hint",
    "state",
    "response_type",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "login_hint",
    "ui_locales",
    "acr_values",
    "post_logout_redirect_uri",
    "file",
];

fn fill(template: &str, value: &str) -> String {
    let enc = tchap_portal::accounts::matrix::percent_encode;
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('<') {
                enc(value)
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Logs the fuzzing agent in; answers the CSRF token its forms carry.
async fn log_in_for_token(client: &rocket::local::asynchronous::Client, user_id: &str) -> String {
    crate::common::log_in(client, user_id, "Fuzz-pass-42").await;
    crate::common::form_token(client, "/").await
}

/// Walks Rocket's route table as a logged-in administrator and sends every route hostile input:
/// every path segment, query parameter and form field, with a valid CSRF token, fields repeated,
/// missing and of the wrong type. No answer may be a server error.
#[rocket::async_test]
async fn hostile_input_on_every_route_never_gives_a_server_error() {
    let enc = tchap_portal::accounts::matrix::percent_encode;
    let (_, user_id) = crate::common::matrix::new_user("fuzz", "Fuzz-pass-42", None).await;
    let db = crate::common::TestDb::new().await;
    let fig = crate::common::figment(&db)
        .merge(("portal.admins", vec![user_id.clone()]))
        // The login form is fuzzed too: its throttle must not lock the fuzzing agent out.
        .merge(("portal.accounts.max_failures", 100_000))
        .merge(("portal.audioconf.numbers", vec!["+33189000001"]));
    let app = TestApp::with_figment(db, fig).await;
    let mut token = log_in_for_token(&app.client, &user_id).await;

    let routes: Vec<(Method, String, Vec<String>)> = app
        .client
        .rocket()
        .routes()
        .filter(|r| matches!(r.method, Method::Get | Method::Post))
        .map(|r| {
            let query: Vec<String> = r
                .uri
                .origin
                .query()
                .map(|q| {
                    q.as_str()
                        .split('&')
                        .map(|p| p.trim_matches(['<', '>', '.']).to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (r.method, r.uri.origin.path().to_string(), query)
        })
        // Logging out would end the session the other routes are tried with.
        .filter(|(_, path, _)| path != "/deconnexion")
        .collect();
    assert!(routes.len() > 40, "the whole table: {}", routes.len());

    let mut failures = vec![];
    let mut tried = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (method, template, query) in &routes {
        for value in hostile_values() {
            let mut path = fill(template, &value);
            if !query.is_empty() {
                let q: Vec<String> = query
                    .iter()
                    .map(|k| format!("{k}={}", enc(&value)))
                    .collect();
                path = format!("{path}?{}", q.join("&"));
            }
            let status = match method {
                Method::Get => app.client.get(path.clone()).dispatch().await.status(),
                _ => {
                    let fields: Vec<String> = FIELDS
                        .iter()
                        .map(|f| format!("{f}={}", enc(&value)))
                        .collect();
                    app.client
                        .post(path.clone())
                        .header(ContentType::Form)
                        .body(format!("csrf_token={token}&{}", fields.join("&")))
                        .dispatch()
                        .await
                        .status()
                }
            };
            tried += 1;
            *statuses.entry(status.code).or_default() += 1;
            if status.code >= 500 {
                failures.push(format!(
                    "{method} {template} with {:?}: {status}",
                    value.chars().take(40).collect::<String>()
                ));
            }
        }
        // A route that ends the session (OpenID logout): log in again, so that every route is
        // tried as a logged-in agent.
        let logged_in = app.client.get("/connexion").dispatch().await.status() == Status::SeeOther;
        if !logged_in {
            token = log_in_for_token(&app.client, &user_id).await;
        }
        if *method == Method::Post {
            let plain = fill(template, "x");
            let repeated: Vec<String> = FIELDS.iter().map(|f| format!("{f}=1&{f}=2")).collect();
            for body in [
                format!("csrf_token={token}"),
                format!("csrf_token={token}&{}", repeated.join("&")),
                format!(
                    "csrf_token={token}&userinfo_signed=maybe&duration=abc&day=%FF%FE&email=%C0"
                ),
            ] {
                let status = app
                    .client
                    .post(plain.clone())
                    .header(ContentType::Form)
                    .body(body.clone())
                    .dispatch()
                    .await
                    .status();
                tried += 1;
                if status.code >= 500 {
                    failures.push(format!(
                        "POST {template} with `{}`: {status}",
                        &body[..body.len().min(80)]
                    ));
                }
            }
        }
    }
    // The input reached the handlers: most answers are the handlers' own pages and refusals,
    // not the guards' 401/403 (a fuzz that only met the door would prove nothing).
    let handled: usize = statuses
        .iter()
        .filter(|(code, _)| !matches!(code, 401 | 403))
        .map(|(_, n)| n)
        .sum();
    assert!(handled * 3 > tried * 2, "answers by status: {statuses:?}");
    assert!(
        failures.is_empty(),
        "{} of {tried} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
