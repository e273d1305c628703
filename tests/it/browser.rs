//! Pages in a real browser with JavaScript off (headless Debian Chromium), audited by axe-core.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::{env, figment, free_port, launch, TestDb};

/// Serves the portal on a real port for the browser; returns its base URL.
pub async fn serve() -> (String, TestDb) {
    serve_with(|f| f).await
}

/// The same, with settings of the test's own.
pub async fn serve_with(
    tweak: impl FnOnce(rocket::figment::Figment) -> rocket::figment::Figment,
) -> (String, TestDb) {
    let db = TestDb::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let fig = tweak(
        figment(&db)
            .merge(("port", port))
            .merge(("portal.public_url", base.clone())),
    );
    launch(fig, port).await;
    (base, db)
}

/// Runs the browser over `steps` ([name, path]) and returns its report, one entry per page.
pub fn browse(base: &str, steps: &[(&str, &str)]) -> Vec<Value> {
    journey(
        base,
        steps
            .iter()
            .map(|(n, p)| json!({"name": n, "path": p}))
            .collect(),
    )
}

/// Runs the browser through `steps` (see tests/browser/audit.cjs: open a page, or fill, check,
/// select and click on the current one) and returns its report, one entry per page reached.
pub fn journey(base: &str, steps: Vec<Value>) -> Vec<Value> {
    let out = std::path::Path::new(&env("IT_ARTIFACTS")).join("screenshots");
    std::fs::create_dir_all(&out).expect("screenshot folder");
    let spec = json!({ "base": base, "out": out, "steps": steps });
    let output = Command::new("node")
        .arg("tests/browser/audit.cjs")
        .arg(spec.to_string())
        .env("NODE_PATH", env("IT_NODE_PATH"))
        .env("IT_CHROMIUM", env("IT_CHROMIUM"))
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("screenshots: {}", out.display());
    serde_json::from_slice(&output.stdout).expect("browser report")
}

/// Fails naming the step, the page and the rule for every problem found on the portal's pages
/// of a journey: axe (WCAG 2.1 A and AA), the checks of `structure` and `focusProblems` in
/// tests/browser/audit.cjs, horizontal scrolling at 320 px, scripts, a page refreshing itself
/// without being asked (`auto=true`), and the same title on two different pages.
pub fn assert_accessible(report: &[Value]) {
    let mut problems = Vec::new();
    let mut titles: std::collections::HashMap<&str, (&str, &str)> = Default::default();
    for page in report.iter().filter(|p| p.get("problems").is_some()) {
        let name = page["name"].as_str().unwrap_or("?");
        let url = page["url"].as_str().unwrap_or("?");
        let mut fail = |rule: &str, what: String| {
            problems.push(format!("step {name} ({url}): {rule}: {what}"))
        };
        for v in page["violations"].as_array().into_iter().flatten() {
            fail(
                &format!("axe {}", v["id"].as_str().unwrap_or("?")),
                format!("{} at {}", v["help"], v["nodes"]),
            );
        }
        for p in page["problems"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap_or("?");
            let (rule, what) = p.split_once(": ").unwrap_or((p, ""));
            fail(rule, what.to_owned());
        }
        if page["scrollWidth320"].as_i64() > page["clientWidth320"].as_i64() {
            fail(
                "reflow-320",
                format!(
                    "scrolls horizontally ({} > {} px)",
                    page["scrollWidth320"], page["clientWidth320"]
                ),
            );
        }
        if page["scripts"].as_i64() != Some(0) {
            fail("no-script", "has <script> elements".into());
        }
        if !page["refresh"].is_null() && !url.contains("auto=true") {
            fail(
                "no-self-refresh",
                format!("refreshes itself ({}) unasked", page["refresh"]),
            );
        }
        // One title per page: the same title on two different paths is a problem.
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let title = page["title"].as_str().unwrap_or("");
        match titles.get(title) {
            Some((other, other_path)) if *other_path != path => fail(
                "unique-title",
                format!("\"{title}\" is also the title of step {other} ({other_path})"),
            ),
            _ => {
                titles.insert(title, (name, path));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "accessibility problems:\n{}",
        problems.join("\n")
    );
}

#[rocket::async_test]
async fn home_error_page_and_language_switch_in_chromium_without_javascript() {
    let (base, _db) = serve().await;
    let report = rocket::tokio::task::spawn_blocking(move || {
        browse(
            &base,
            &[
                ("home-fr", "/"),
                ("not-found", "/page/qui/n/existe/pas"),
                ("home-en", "/langue/en?next=%2F"),
                ("sitemap-en", "/plan-du-site"),
                ("accessibility-en", "/accessibilite"),
                ("legal-fr", "/langue/fr?next=%2Fmentions-legales"),
                ("login-fr", "/connexion"),
                ("audioconf-fr", "/audioconf"),
                ("audioconf-stats-fr", "/audioconf/statistiques"),
            ],
        )
    })
    .await
    .expect("browser");
    let by_name = |n: &str| report.iter().find(|p| p["name"] == n).expect(n).clone();
    assert_eq!(by_name("home-fr")["title"], "Accueil — Portail Tchap");
    assert_eq!(by_name("not-found")["status"], 404);
    assert_eq!(
        by_name("not-found")["title"],
        "Page non trouvée — Portail Tchap"
    );
    // The switch is a plain link: it works with JavaScript off, and the choice sticks.
    assert_eq!(by_name("home-en")["title"], "Home — Tchap Portal");
    assert_eq!(by_name("sitemap-en")["title"], "Site map — Tchap Portal");
    assert_eq!(
        by_name("legal-fr")["title"],
        "Mentions légales — Portail Tchap"
    );
    assert_eq!(
        by_name("audioconf-fr")["title"],
        "Réserver une audioconférence — Portail Tchap"
    );
    assert_accessible(&report);
}

/// A confidential client (pairwise, ES256) whose redirect URI is `/cb` on a free port: answers
/// the port, the client and its secret.
async fn state_service(
    db: &TestDb,
    name: &str,
) -> (u16, tchap_portal::oidc::clients::Client, String) {
    use tchap_portal::oidc::clients::{self, NewClient};
    let port = free_port();
    let (c, secret) = clients::add(
        &mut db.conn().await,
        &NewClient {
            name: name.into(),
            redirect_uris: vec![format!("http://127.0.0.1:{port}/cb")],
            post_logout_redirect_uris: vec![],
            public: false,
            subject_type: "pairwise".into(),
            id_token_alg: "ES256".into(),
            userinfo_signed: false,
        },
        chrono::Utc::now(),
    )
    .await
    .expect("client");
    (port, c, secret.expect("a confidential client's secret"))
}

#[rocket::async_test]
async fn a_third_party_relying_party_library_completes_a_flow() {
    let (base, db) = serve().await;
    let (port, c, secret) = state_service(&db, "Service de test (openid-client)").await;
    let password = "Correct-horse-42";
    let (_, user_id) =
        crate::common::matrix::new_user("rp", password, Some("Camille Durand [DINUM]")).await;
    let spec = json!({
        "issuer": base, "client_id": c.client_id, "client_secret": secret,
        "port": port, "identifier": user_id, "password": password,
    });
    let output = rocket::tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("tests/browser/rp.cjs")
            .arg(spec.to_string())
            .env("NODE_PATH", env("IT_NODE_PATH"))
            .env("IT_CHROMIUM", env("IT_CHROMIUM"))
            .output()
            .expect("run node")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "openid-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("report");
    let claims = &out["claims"];
    assert_eq!(claims["iss"], base.as_str());
    assert_eq!(claims["aud"], c.client_id.as_str());
    assert!(out["callback"].as_str().is_some_and(|u| u.contains("iss=")));
    let info = &out["userinfo"];
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["given_name"], "Camille");
    assert_eq!(info["family_name"], "Durand");
    assert_eq!(info["organization"], "DINUM");
    assert_eq!(info["matrix_user_id"], user_id.as_str());
}

/// The page of `report` named `name`.
fn step<'a>(report: &'a [Value], name: &str) -> &'a Value {
    report
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no page {name} in the report"))
}

/// A PIN as shown to people: three groups of three digits.
fn shown_pin(text: &str) -> Option<String> {
    text.split('\n').find_map(|line| {
        let digits: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        let groups: Vec<&str> = line.split_whitespace().collect();
        (digits.len() == 9
            && digits.bytes().all(|b| b.is_ascii_digit())
            && groups.len() == 3
            && groups.iter().all(|g| g.len() == 3))
        .then_some(digits)
    })
}

#[rocket::async_test]
async fn audioconf_journeys_by_email_and_with_tchap_in_chromium_without_javascript() {
    use crate::common::matrix::{new_user, set_email};
    use crate::common::smtp::{link_in, parse, SmtpServer};
    let smtp = SmtpServer::start();
    let port = smtp.port;
    let (base, _db) = serve_with(move |f| {
        f.merge(("portal.audioconf.numbers", vec!["+33189000000"]))
            .merge(("portal.mail.worker", true))
            .merge(("portal.mail.transport", "smtp"))
            .merge(("portal.mail.smtp_host", "127.0.0.1"))
            .merge(("portal.mail.smtp_port", port))
            .merge(("portal.mail.smtp_security", "none"))
            .merge(("portal.mail.poll_secs", 1))
    })
    .await;

    // By email: the form, then "check your mail".
    let email = "camille.martin@numerique.gouv.fr";
    let report = journey(
        &base,
        vec![
            json!({"name": "audioconf-form", "path": "/audioconf"}),
            json!({"name": "audioconf-form-error", "fill": {"#email": "camille.martin@gmail.com"},
                   "check": ["#when-duration"], "select": {"#duration": "60"},
                   "click": "#contenu button[type=submit]:not([formaction])"}),
            json!({"name": "audioconf-email-sent", "fill": {"#email": email},
                   "check": ["#when-duration"], "select": {"#duration": "60"},
                   "click": "#contenu button[type=submit]:not([formaction])"}),
        ],
    );
    assert_accessible(&report);
    // A refused address: the title says so first, the address typed is kept.
    let refused = step(&report, "audioconf-form-error");
    assert_eq!(refused["status"], 422, "{refused}");
    assert!(
        refused["title"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Erreur : "),
        "{refused}"
    );
    let sent = step(&report, "audioconf-email-sent");
    assert!(
        sent["text"].as_str().unwrap_or_default().contains(email),
        "{sent}"
    );

    // The link from the mail → the confirmation page → one button → the number and PIN.
    let link = link_in(&parse(&smtp.wait_for(1)[0]), "/audioconf/confirmer/");
    let report = journey(
        &base,
        vec![
            json!({"name": "audioconf-confirm", "path": link}),
            json!({"name": "audioconf-details", "click": "#contenu button[type=submit]"}),
        ],
    );
    assert_accessible(&report);
    let details = step(&report, "audioconf-details");
    let text = details["text"].as_str().unwrap_or_default();
    assert!(text.contains("01 89 00 00 00"), "{text}");
    let pin = shown_pin(text).unwrap_or_else(|| panic!("a PIN on the page: {text}"));

    // The details mail has the same PIN; its cancellation link ends the line.
    let details_mail = smtp
        .wait_for(2)
        .iter()
        .map(|m| parse(m))
        .find(|m| {
            m["text"]
                .as_str()
                .unwrap_or_default()
                .contains("/audioconf/annuler/")
        })
        .expect("the details mail");
    assert!(details_mail["text"]
        .as_str()
        .unwrap_or_default()
        .contains(&format!("{} {} {}", &pin[..3], &pin[3..6], &pin[6..])));
    let cancel = link_in(&details_mail, "/audioconf/annuler/");
    let report = journey(
        &base,
        vec![
            json!({"name": "audioconf-cancel", "path": cancel}),
            json!({"name": "audioconf-cancelled", "click": "#contenu button[type=submit]"}),
        ],
    );
    assert_accessible(&report);
    assert_eq!(step(&report, "audioconf-cancelled")["status"], 200);

    // With Tchap: log in, press the button, approve on the consent page, the line is shown.
    let (_, user_id) = new_user("navig", "Navig-pass-42", Some("Léa Petit [DINUM]")).await;
    set_email(&user_id, "lea.petit@numerique.gouv.fr").await;
    let report = journey(
        &base,
        vec![
            json!({"name": "login", "path": "/connexion"}),
            json!({"name": "login-done", "fill": {"#identifier": user_id, "#password": "Navig-pass-42"},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "chat-rooms", "path": "/discussions"}),
            json!({"name": "audioconf-form-logged-in", "path": "/audioconf"}),
            json!({"name": "audioconf-tchap-consent", "click": "#contenu button[formaction]"}),
            json!({"name": "audioconf-tchap-details", "click": "button[value=approve]"}),
        ],
    );
    assert_accessible(&report);
    let consent = step(&report, "audioconf-tchap-consent");
    assert!(consent["text"]
        .as_str()
        .unwrap_or_default()
        .contains("lea.petit@numerique.gouv.fr"));
    let details = step(&report, "audioconf-tchap-details");
    assert_eq!(details["status"], 200, "{details}");
    let text = details["text"].as_str().unwrap_or_default();
    assert!(shown_pin(text).is_some(), "a PIN on the page: {text}");
    assert!(text.contains("lea.petit@numerique.gouv.fr"));
}

#[rocket::async_test]
async fn tchap_web_leger_journey_in_chromium_without_javascript() {
    use crate::common::matrix::{call, create_room, new_user, send, token_of};
    let password = "Salon-pass-42";
    let (_, alice) = new_user("lecteur", password, Some("Alice Lecteur")).await;
    let (_, bob) = new_user("collegue", password, Some("Bob Collègue")).await;
    let (ta, tb) = (
        token_of(&alice, password).await,
        token_of(&bob, password).await,
    );
    let enc = tchap_portal::accounts::matrix::percent_encode;
    let forum = create_room(
        &tb,
        json!({"name": "Salon du navigateur", "preset": "public_chat"}),
    )
    .await;
    call("POST", &ta, &format!("/join/{}", enc(&forum)), json!({})).await;
    for n in 1..=40 {
        send(
            &tb,
            &forum,
            json!({"msgtype": "m.text", "body": format!("Message {n} de Bob")}),
        )
        .await;
    }
    create_room(
        &tb,
        json!({"name": "Équipe privée", "preset": "private_chat", "invite": [alice]}),
    )
    .await;
    let image = std::env::temp_dir().join(format!("portail-{}.png", std::process::id()));
    std::fs::write(
        &image,
        [
            0x89u8, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48,
            0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00,
            0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78,
            0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0, 0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99,
            0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
        ],
    )
    .expect("image");
    let room = format!("/discussions/{}", enc(&forum));
    let (base, _db) = serve().await;
    let report = journey(
        &base,
        vec![
            json!({"name": "chat-login", "path": "/connexion"}),
            json!({"name": "chat-login-done", "fill": {"#identifier": alice, "#password": password},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "chat-list", "path": "/discussions"}),
            json!({"name": "chat-room", "click": "a.portal-room__name"}),
            json!({"name": "chat-sent", "fill": {"#message": "Bonjour depuis le navigateur"},
                   "click": "form[action$=\"/envoyer\"] button"}),
            json!({"name": "chat-older", "click": "a.fr-icon-arrow-up-line"}),
            json!({"name": "chat-room-again", "path": room}),
            json!({"name": "chat-file-sent", "upload": {"#file": image.display().to_string()},
                   "click": "form[action$=\"/fichier\"] button"}),
            json!({"name": "chat-invitations", "path": "/discussions"}),
            json!({"name": "chat-invitation-accepted", "click": "button[value=accept]"}),
            json!({"name": "chat-direct-form", "path": "/discussions/direct"}),
            json!({"name": "chat-direct-started", "fill": {"#contact": bob},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "chat-join-form", "path": "/discussions/rejoindre?q=navigateur"}),
            json!({"name": "chat-create-form", "path": "/discussions/nouveau"}),
            json!({"name": "chat-leave-confirm", "path": format!("{room}/quitter")}),
            json!({"name": "chat-left", "click": "#contenu button[type=submit]"}),
        ],
    );
    let _ = std::fs::remove_file(&image);
    assert_accessible(&report);
    let text = |name: &str| {
        step(&report, name)["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(text("chat-room").contains("Message 40 de Bob"));
    assert!(
        !text("chat-room").contains("Message 5 de Bob"),
        "30 events per page"
    );
    assert!(text("chat-sent").contains("Bonjour depuis le navigateur"));
    assert!(text("chat-older").contains("Message 5 de Bob"));
    assert!(text("chat-file-sent").contains("Fichier envoyé."));
    assert!(text("chat-invitation-accepted").contains("Équipe privée"));
    assert!(
        text("chat-invitation-accepted").contains("ouvrez Tchap pour les lire"),
        "an encrypted room says so"
    );
    let direct = step(&report, "chat-direct-started");
    assert_eq!(direct["status"], 200, "{direct}");
    assert!(direct["url"]
        .as_str()
        .unwrap_or_default()
        .contains("fait=created"));
    assert!(text("chat-left").contains("Vous avez quitté le salon."));
    assert!(!text("chat-left").contains("Salon du navigateur"));
}

#[rocket::async_test]
async fn login_wrong_password_language_and_logout_in_chromium_without_javascript() {
    use crate::common::matrix::new_user;
    let password = "Bonne-porte-42";
    let (_, user_id) = new_user("entree", password, Some("Inès Dupont [DINUM]")).await;
    let (base, _db) = serve().await;
    let report = journey(
        &base,
        vec![
            json!({"name": "login-form", "path": "/connexion?next=%2Fmes-services"}),
            json!({"name": "login-wrong-password", "fill": {"#identifier": user_id, "#password": "Mauvaise-porte-1"},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "login-right-password", "fill": {"#password": password},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "services-en", "click": "a[hreflang=en]"}),
            json!({"name": "services-fr", "click": "a[hreflang=fr]"}),
            json!({"name": "sitemap-logged-in", "click": "footer a[href=\"/plan-du-site\"]"}),
            json!({"name": "logged-out", "click": "form[action=\"/deconnexion\"] button"}),
            json!({"name": "services-after-logout", "path": "/mes-services"}),
        ],
    );
    assert_accessible(&report);
    let wrong = step(&report, "login-wrong-password");
    assert!(
        wrong["title"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Erreur : "),
        "{wrong}"
    );
    // The identifier typed is kept; the summary names the problem.
    let text = wrong["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("L’adresse ou le mot de passe est incorrect"),
        "{text}"
    );
    let right = step(&report, "login-right-password");
    assert!(right["url"]
        .as_str()
        .unwrap_or_default()
        .ends_with("/mes-services"));
    assert_eq!(right["title"], "Mes services connectés — Portail Tchap");
    assert_eq!(
        step(&report, "services-en")["title"],
        "My connected services — Tchap Portal"
    );
    assert_eq!(
        step(&report, "services-fr")["title"],
        "Mes services connectés — Portail Tchap"
    );
    assert!(step(&report, "sitemap-logged-in")["text"]
        .as_str()
        .unwrap_or_default()
        .contains("Inès Dupont"));
    let out = step(&report, "logged-out");
    assert!(!out["text"]
        .as_str()
        .unwrap_or_default()
        .contains("Inès Dupont"));
    // Logged out for real: the private page asks to log in again.
    let after = step(&report, "services-after-logout");
    assert!(
        after["url"]
            .as_str()
            .unwrap_or_default()
            .contains("/connexion"),
        "{after}"
    );
}

/// A state service's two pages, served by the test on its own port: a "Se connecter avec Tchap"
/// link to the portal's /authorize, and the callback page that shows what came back.
struct Service {
    base: String,
    verifier: String,
}

impl Service {
    fn start(port: u16, issuer: &str, client_id: &str) -> Service {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let base = format!("http://127.0.0.1:{port}");
        let verifier =
            tchap_portal::crypto::b64url(&tchap_portal::crypto::random_bytes(32).expect("random"));
        let challenge =
            tchap_portal::crypto::b64url(&tchap_portal::crypto::sha256(verifier.as_bytes()));
        let enc = tchap_portal::accounts::matrix::percent_encode;
        let authorize = format!(
            "{issuer}/authorize?response_type=code&client_id={client_id}&redirect_uri={}\
             &scope=openid%20profile%20email&state=etat-42&nonce=n-42\
             &code_challenge={challenge}&code_challenge_method=S256",
            enc(&format!("{base}/cb"))
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                while let Ok(n) = reader.read_line(&mut String::new()) {
                    if n <= 2 {
                        break;
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = if target.starts_with("/cb") {
                    format!(
                        "<h1>Retour au service</h1><p id=\"retour\">{}</p>",
                        target.replace('<', "&lt;")
                    )
                } else {
                    format!("<h1>Démarches</h1><p><a id=\"tchap\" href=\"{}\">Se connecter avec Tchap</a></p>", authorize.replace('&', "&amp;"))
                };
                let page = format!(
                    "<!doctype html><html lang=\"fr\"><title>Service de l’État</title>{body}</html>"
                );
                let _ = write!(
                    &stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            }
        });
        Service { base, verifier }
    }
}

#[rocket::async_test]
async fn tchap_identite_journey_in_chromium_without_javascript() {
    use crate::common::matrix::{new_user, set_email};
    let (base, db) = serve().await;
    let password = "Identite-pass-42";
    let (_, user_id) = new_user("ident", password, Some("Nora Benali [DINUM]")).await;
    set_email(&user_id, "nora.benali@numerique.gouv.fr").await;
    let (port, c, secret) = state_service(&db, "Démarches simplifiées").await;
    let service = Service::start(port, &base, &c.client_id);
    let rp = |name: &str| json!({"name": name, "path": service.base, "audit": false});
    let report = journey(
        &base,
        vec![
            rp("rp-start"),
            json!({"name": "identite-login", "click": "#tchap"}),
            json!({"name": "identite-consent", "fill": {"#identifier": user_id, "#password": password},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "rp-refused", "click": "button[value=refuse]", "audit": false}),
            rp("rp-again"),
            json!({"name": "identite-consent-again", "click": "#tchap"}),
            json!({"name": "rp-approved", "click": "button[value=approve]", "audit": false}),
        ],
    );
    assert_accessible(&report);
    // The consent page shows the values, not only their names.
    let consent = step(&report, "identite-consent")["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for value in [
        "Démarches simplifiées",
        "Nora",
        "Benali",
        "nora.benali@numerique.gouv.fr",
    ] {
        assert!(
            consent.contains(value),
            "{value} on the consent page: {consent}"
        );
    }
    let refused = step(&report, "rp-refused")["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        refused.starts_with(&format!("{}/cb?", service.base)),
        "{refused}"
    );
    assert!(refused.contains("error=access_denied") && refused.contains("state=etat-42"));
    let approved = step(&report, "rp-approved")["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let code = crate::oidc_flow::query(&approved)
        .remove("code")
        .unwrap_or_else(|| panic!("a code at the service: {approved}"));
    // The code the browser brought back is good for tokens, once, with the PKCE verifier.
    let tokens: Value = reqwest::Client::new()
        .post(format!("{base}/token"))
        .basic_auth(&c.client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &format!("{}/cb", service.base)),
            ("code_verifier", &service.verifier),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let access = tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let userinfo = |token: String| {
        let base = base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/userinfo"))
                .bearer_auth(token)
                .send()
                .await
                .expect("userinfo")
                .status()
                .as_u16()
        }
    };
    assert_eq!(userinfo(access.clone()).await, 200);

    // Later, from another browser: "Mes services connectés" → revoke; the service loses access.
    let report = journey(
        &base,
        vec![
            json!({"name": "identite-login-later", "path": "/connexion?next=%2Fmes-services"}),
            json!({"name": "identite-services", "fill": {"#identifier": user_id, "#password": password},
                   "click": "#contenu button[type=submit]"}),
            json!({"name": "identite-revoked", "click": "form[action$=\"/retirer\"] button"}),
        ],
    );
    assert_accessible(&report);
    assert_eq!(userinfo(access).await, 401, "the revoked service's token");
    let services = step(&report, "identite-services")["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(services.contains("Démarches simplifiées"), "{services}");
    let revoked = step(&report, "identite-revoked")["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        revoked.contains("Votre accord pour Démarches simplifiées est retiré"),
        "{revoked}"
    );
    assert!(!revoked.contains("Retirer mon accord"), "{revoked}");
}
