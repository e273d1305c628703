//! Tchap Web léger's room page against the real Synapse: history in words, edits, replies,
//! deletions, encrypted rooms, sending once per form, older messages, an XSS corpus, read receipts,
//! files through the media proxy, joining, leaving, creating, direct chats and invitations.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::Client;
use serde_json::{json, Value};
use tchap_portal::chat::hs::Hs;
use tchap_portal::db::schema::sessions;

use crate::common::matrix::{
    call, create_room, new_user, random_tag, register_exact, send, token_of,
};
use crate::common::{csrf_token, field, get, get_raw, log_in, post_form, title, TestApp};

const PASSWORD: &str = "Salon-pass-42";

pub(crate) fn enc(s: &str) -> String {
    tchap_portal::accounts::matrix::percent_encode(s)
}

pub(crate) fn room_path(room: &str) -> String {
    format!("/discussions/{}", enc(room))
}

fn hs(client: &Client) -> &Hs {
    client.rocket().state::<Hs>().expect("hs")
}

/// The timeline part of a room page.
fn timeline(page: &str) -> &str {
    let start = page.find("<ol class=\"portal-timeline\">").unwrap_or(0);
    let end = page[start..]
        .find("</ol>")
        .map_or(page.len(), |e| start + e);
    &page[start..end]
}

/// The bodies of the latest messages of a room, as the homeserver has them.
async fn bodies(token: &str, room: &str) -> Vec<String> {
    let res = call(
        "GET",
        token,
        &format!("/rooms/{}/messages?dir=b&limit=100", enc(room)),
        json!({}),
    )
    .await;
    res["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn send_message(
    client: &Client,
    room: &str,
    page: &str,
    message: &str,
    extra: &str,
) -> (Status, Option<String>, String) {
    post_form(
        client,
        &format!("{}/envoyer", room_path(room)),
        format!(
            "csrf_token={}&nonce={}&message={}{extra}",
            csrf_token(page),
            field(page, "nonce"),
            enc(message)
        ),
    )
    .await
}

#[rocket::async_test]
async fn the_room_page_tells_the_history_in_words_with_edits_replies_and_deletions() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    let room = create_room(
        &ta,
        json!({"name": "Salle de test", "preset": "private_chat", "invite": [bob]}),
    )
    .await;
    call("POST", &tb, &format!("/join/{}", enc(&room)), json!({})).await;
    send(
        &tb,
        &room,
        json!({"msgtype": "m.text", "body": "Bonjour Alice"}),
    )
    .await;
    let first = send(
        &ta,
        &room,
        json!({"msgtype": "m.text", "body": "Première version"}),
    )
    .await;
    send(
        &ta,
        &room,
        json!({"msgtype": "m.text", "body": "* Version corrigée",
            "m.new_content": {"msgtype": "m.text", "body": "Version corrigée"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": first}}),
    )
    .await;
    send(
        &tb,
        &room,
        json!({"msgtype": "m.text", "body": "> <@alice> Version corrigée\n\nBien reçu",
            "m.relates_to": {"m.in_reply_to": {"event_id": first}}}),
    )
    .await;
    let oops = send(
        &tb,
        &room,
        json!({"msgtype": "m.text", "body": "Oups, mauvais salon"}),
    )
    .await;
    call(
        "PUT",
        &tb,
        &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&oops)),
        json!({}),
    )
    .await;
    send(
        &tb,
        &room,
        json!({"msgtype": "m.emote", "body": "arrive dans 5 minutes"}),
    )
    .await;
    send(
        &tb,
        &room,
        json!({"msgtype": "m.notice", "body": "Rappel automatique"}),
    )
    .await;
    call(
        "PUT",
        &ta,
        &format!("/rooms/{}/state/m.room.name/", enc(&room)),
        json!({"name": "Salle renommée"}),
    )
    .await;
    send(
        &tb,
        &room,
        json!({"msgtype": "m.text", "body": "Alice ?", "m.mentions": {"user_ids": [alice]}}),
    )
    .await;

    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, list) = get(&app.client, "/discussions").await;
    assert!(
        list.contains(&format!("href=\"{}\"", room_path(&room))),
        "rooms are links"
    );
    assert!(list.contains("non lu(s)"), "unread before viewing");

    let calls = hs(&app.client).calls();
    let (status, _, page) = get(&app.client, &room_path(&room)).await;
    assert_eq!(status, Status::Ok, "{page}");
    assert_eq!(
        hs(&app.client).calls() - calls,
        3,
        "sync, /messages and a read receipt (something was unread)"
    );
    assert_eq!(title(&page), "Salle renommée — Portail Tchap");
    let t = timeline(&page);
    let at = |needle: &str| t.find(needle).unwrap_or_else(|| panic!("{needle} in {t}"));
    assert!(at("Alice Martin a créé le salon") < at("Bob Durand a rejoint le salon"));
    assert!(t.contains("Alice Martin a invité Bob Durand"), "{t}");
    assert!(at("Bonjour Alice") < at("Version corrigée"));
    assert!(t.contains("(modifié)"));
    assert!(
        !t.contains("Première version"),
        "the edit replaces the text"
    );
    assert!(
        !t.contains("* Version corrigée"),
        "the edit event is not shown twice"
    );
    let reply = &t[at("Bien reçu") - 200..at("Bien reçu")];
    assert!(
        reply.contains("Alice Martin : Version corrigée"),
        "the reply quotes what it answers: {reply}"
    );
    assert!(
        !t.contains("&gt; &lt;@alice&gt;"),
        "the reply fallback is not shown"
    );
    assert!(t.contains("Message supprimé") && !t.contains("mauvais salon"));
    assert!(t.contains("* Bob Durand arrive dans 5 minutes"));
    assert!(t.contains("Rappel automatique"));
    assert!(t.contains("Alice Martin a renommé le salon en « Salle renommée »"));
    assert!(
        t.contains("<time datetime=\""),
        "times are machine-readable"
    );
    assert!(
        page.contains("id=\"dernier\""),
        "the newest message is an anchor"
    );
    assert!(
        !page.contains("http-equiv=\"refresh\""),
        "no refresh unless asked"
    );

    // Viewing sent a read receipt: the list has nothing unread for this room any more.
    let (_, _, list) = get(&app.client, "/discussions").await;
    let item = &list[list.find("Salle renommée").expect("room in list")..];
    let item = &item[..item.find("</li>").expect("end of item")];
    assert!(!item.contains("non lu"), "{item}");
    assert!(!item.contains("mention"), "{item}");
    let calls = hs(&app.client).calls();
    get(&app.client, &room_path(&room)).await;
    assert_eq!(
        hs(&app.client).calls() - calls,
        2,
        "no receipt when all is read"
    );

    // Automatic refresh only when asked, with a way to stop it.
    let (_, _, auto) = get(&app.client, &format!("{}?auto=true", room_path(&room))).await;
    assert!(auto.contains("<meta http-equiv=\"refresh\" content=\"30;"));
    assert!(auto.contains("Arrêter l’actualisation automatique"));

    // A room the agent is not in, or no room at all: 404.
    let elsewhere = create_room(&tb, json!({"name": "Salon de Bob seul"})).await;
    for path in [
        room_path(&elsewhere),
        "/discussions/pas-un-salon".to_owned(),
    ] {
        let (status, _, _) = get(&app.client, &path).await;
        assert_eq!(status, Status::NotFound, "{path}");
    }
}

#[rocket::async_test]
async fn sending_from_the_room_page_sends_once_replies_and_keeps_the_text_on_errors() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    let room = create_room(&ta, json!({"name": "Envois", "preset": "public_chat"})).await;
    call("POST", &tb, &format!("/join/{}", enc(&room)), json!({})).await;
    let question = send(
        &tb,
        &room,
        json!({"msgtype": "m.text", "body": "Qui vient jeudi ?"}),
    )
    .await;

    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, page) = get(&app.client, &room_path(&room)).await;

    // The same form submitted twice (a double click, a resubmitted page): one message.
    for _ in 0..2 {
        let (status, location, _) =
            send_message(&app.client, &room, &page, "Bonjour à tous", "").await;
        assert_eq!(status, Status::SeeOther);
        assert_eq!(location, Some(format!("{}#dernier", room_path(&room))));
    }
    let sent = bodies(&ta, &room).await;
    assert_eq!(
        sent.iter().filter(|b| *b == "Bonjour à tous").count(),
        1,
        "{sent:?}"
    );
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    assert!(timeline(&page).contains("Bonjour à tous"));

    // Errors come back on the page, the text kept, tied to the field.
    let (status, _, again) = send_message(&app.client, &room, &page, "   ", "").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(title(&again).starts_with("Erreur"), "{}", title(&again));
    assert!(again.contains("Écrivez un message avant d’envoyer."));
    assert!(again.contains("aria-describedby=\"message-erreur\""));
    assert!(
        again.contains("href=\"#message\""),
        "the summary links to the field"
    );
    let long = "x".repeat(20_001);
    let (status, _, again) = send_message(&app.client, &room, &page, &long, "").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(
        again.contains(&format!(">{long}</textarea>")),
        "the text is kept"
    );
    assert!(again.contains("dépasse 20000 caractères"));

    // Replying: the page quotes the message answered, and the message is a Matrix reply.
    let (_, _, page) = get(
        &app.client,
        &format!("{}?repondre={}", room_path(&room), enc(&question)),
    )
    .await;
    assert!(
        page.contains("En réponse à Bob Durand : Qui vient jeudi ?"),
        "{page}"
    );
    assert_eq!(field(&page, "reply_to"), question);
    let (status, _, _) = send_message(
        &app.client,
        &room,
        &page,
        "Moi !",
        &format!("&reply_to={}", enc(&question)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let res = call(
        "GET",
        &tb,
        &format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)),
        json!({}),
    )
    .await;
    let last = &res["chunk"][0]["content"];
    assert_eq!(last["body"], "Moi !");
    assert_eq!(
        last["m.relates_to"]["m.in_reply_to"]["event_id"],
        json!(question)
    );
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    let t = timeline(&page);
    let reply = &t[..t.find("Moi !").expect("reply shown")];
    assert!(reply[reply.len().saturating_sub(300)..].contains("Bob Durand : Qui vient jeudi ?"));

    // The homeserver does not answer: the text comes back, ready to send again under the same
    // nonce; sending it once the homeserver is back posts it once.
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    let mut conn = app.db.conn().await;
    let real: String = sessions::table
        .select(sessions::homeserver_url)
        .first(&mut conn)
        .await
        .expect("session");
    diesel::update(sessions::table)
        .set(sessions::homeserver_url.eq("http://127.0.0.1:9"))
        .execute(&mut conn)
        .await
        .expect("point elsewhere");
    let (status, _, unsent) = send_message(&app.client, &room, &page, "Pas perdu", "").await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert_eq!(title(&unsent), "Message non envoyé — Portail Tchap");
    assert!(unsent.contains(">Pas perdu</textarea>"), "the text is kept");
    assert_eq!(field(&unsent, "nonce"), field(&page, "nonce"), "same nonce");
    diesel::update(sessions::table)
        .set(sessions::homeserver_url.eq(&real))
        .execute(&mut conn)
        .await
        .expect("back");
    for _ in 0..2 {
        let (status, _, _) = send_message(&app.client, &room, &unsent, "Pas perdu", "").await;
        assert_eq!(status, Status::SeeOther);
    }
    let sent = bodies(&ta, &room).await;
    assert_eq!(sent.iter().filter(|b| *b == "Pas perdu").count(), 1);

    // An encrypted room: said honestly, no send form, nothing sent in clear.
    let secret = create_room(
        &tb,
        json!({"name": "Chiffré", "preset": "private_chat", "invite": [alice],
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    call("POST", &ta, &format!("/join/{}", enc(&secret)), json!({})).await;
    call(
        "PUT",
        &tb,
        &format!("/rooms/{}/send/m.room.encrypted/e1", enc(&secret)),
        json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "k",
            "device_id": "D", "session_id": "s"}),
    )
    .await;
    let (status, _, page) = get(&app.client, &room_path(&secret)).await;
    assert_eq!(status, Status::Ok);
    assert!(timeline(&page).contains("Message chiffré : ouvrez Tchap pour le lire"));
    assert!(page.contains("Tchap Web léger ne peut pas encore y envoyer"));
    assert!(
        !page.contains("/envoyer\""),
        "no send form in an encrypted room"
    );
    let (_, _, plain_room) = get(&app.client, &room_path(&room)).await;
    let forged = plain_room.replace(&enc(&room), &enc(&secret));
    let (status, _, again) = send_message(&app.client, &secret, &forged, "en clair ?", "").await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(again.contains("Tchap Web léger ne peut pas encore y envoyer"));
    assert!(
        bodies(&tb, &secret).await.is_empty(),
        "nothing sent in clear"
    );
}

#[rocket::async_test]
async fn older_messages_page_back_to_the_first_of_a_hundred() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let ta = token_of(&alice, PASSWORD).await;
    let room = create_room(&ta, json!({"name": "Cent messages"})).await;
    for n in 1..=100 {
        send(
            &ta,
            &room,
            json!({"msgtype": "m.text", "body": format!("Message numéro {n}.")}),
        )
        .await;
    }
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, mut page) = get(&app.client, &room_path(&room)).await;
    assert!(page.contains("Message numéro 100."));
    assert!(!page.contains("Message numéro 70."), "30 events per page");
    let mut seen = vec![0u32; 101];
    let mut pages = 1;
    loop {
        for n in 1..=100u32 {
            if timeline(&page).contains(&format!("Message numéro {n}.")) {
                seen[n as usize] += 1;
            }
        }
        let marker = "fr-icon-arrow-up-line fr-link--icon-left\" href=\"";
        let Some(at) = page.find(marker) else { break };
        let href = page[at + marker.len()..]
            .split('"')
            .next()
            .expect("href")
            .to_owned();
        let (status, _, next) = get(&app.client, &href).await;
        assert_eq!(status, Status::Ok, "{href}");
        assert!(
            title(&next).contains("messages plus anciens"),
            "{}",
            title(&next)
        );
        assert!(next.contains("Revenir aux messages les plus récents"));
        page = next;
        pages += 1;
        assert!(pages < 10, "pagination ends");
    }
    assert!(
        seen[1..].iter().all(|&c| c == 1),
        "every message exactly once: {seen:?}"
    );
    assert!(
        timeline(&page).contains("Alice Martin a créé le salon"),
        "reached the start: {}",
        timeline(&page)
    );
    assert_eq!(
        pages, 4,
        "100 messages and the room's creation in pages of 30"
    );
}

/// Tags a sanitised page may hold in its timeline.
const ALLOWED_TAGS: &[&str] = &[
    "li",
    "p",
    "strong",
    "time",
    "span",
    "div",
    "a",
    "img",
    "br",
    "blockquote",
    "em",
    "b",
    "i",
    "u",
    "code",
    "pre",
    "ul",
    "ol",
    "h3",
    "del",
    "s",
    "sub",
    "sup",
    "font",
    "table",
    "tr",
    "td",
    "th",
    "thead",
    "tbody",
    "caption",
    "hr",
    "h1",
    "h2",
    "h4",
    "h5",
    "h6",
    "details",
    "summary",
];

/// Every real tag in `html` (text is escaped, so `<` starts only tags): name and attributes.
fn tags(html: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if !tag.starts_with('/') {
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            out.push((name.to_lowercase(), tag[name.len()..].to_owned()));
        }
        rest = &rest[end.min(rest.len())..];
    }
    out
}

#[rocket::async_test]
async fn an_xss_corpus_renders_inert() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, mallory) = new_user("mallory", PASSWORD, Some("<img src=x onerror=alert(1)>")).await;
    let (ta, tm) = (
        token_of(&alice, PASSWORD).await,
        token_of(&mallory, PASSWORD).await,
    );
    let room = create_room(
        &ta,
        json!({"name": "<script>alert('nom')</script>", "preset": "public_chat"}),
    )
    .await;
    call("POST", &tm, &format!("/join/{}", enc(&room)), json!({})).await;
    let corpus = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "<a href=\"javascript:alert(1)\">clic</a>",
        "<a href=\"JaVaScRiPt:alert(1)\">clic2</a>",
        "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">data</a>",
        "<svg onload=alert(1)><circle r=1></svg>",
        "<p style=\"background:url(javascript:alert(1))\">style</p>",
        "<style>body{display:none}</style>",
        "<iframe src=\"https://evil.example\"></iframe>",
        "<object data=\"x\"></object><embed src=\"x\">",
        "<form action=\"https://evil.example\"><input name=x><button>ok</button></form>",
        "<b><i>cassé</b></i><p><div onclick=alert(1)>imbriqué",
        "<img src=\"mxc://localhost/abc\" onmouseover=\"alert(1)\">",
        "<a href=\"https://example.org\" target=\"_blank\">lien sûr</a>",
        "\"><script>alert(1)</script>",
        "<math><mi xlink:href=\"javascript:alert(1)\">m</mi></math>",
        "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example\">",
        "<base href=\"https://evil.example/\">",
        "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    ];
    for evil in corpus {
        send(
            &tm,
            &room,
            json!({"msgtype": "m.text", "body": evil, "format": "org.matrix.custom.html", "formatted_body": evil}),
        )
        .await;
        send(&tm, &room, json!({"msgtype": "m.text", "body": evil})).await;
    }
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (status, page) = get_raw(&app.client, &room_path(&room)).await;
    assert_eq!(status, Status::Ok);
    let t = timeline(&page);
    assert!(
        t.contains("lien sûr") && t.contains("cassé"),
        "benign text kept"
    );
    for (name, attrs) in tags(t) {
        assert!(
            ALLOWED_TAGS.contains(&name.as_str()),
            "tag <{name}{attrs}> in the page"
        );
        let lower = attrs.to_lowercase();
        for bad in [
            " on",
            "style=",
            "javascript:",
            "data:",
            "xlink",
            "srcdoc",
            "formaction",
        ] {
            assert!(!lower.contains(bad), "<{name}{attrs}> holds {bad}");
        }
        for attr in ["href=\"", "src=\""] {
            if let Some(i) = attrs.find(attr) {
                let url = attrs[i + attr.len()..].replace("&#x2F;", "/");
                assert!(
                    url.starts_with("https://") || url.starts_with('/') || url.starts_with('#'),
                    "<{name}{attrs}>: only web or portal addresses"
                );
            }
        }
        if name == "a" && attrs.contains("https://") {
            assert!(attrs.contains("rel=\"noopener noreferrer\""), "<a{attrs}>");
            assert!(!attrs.contains("target"), "<a{attrs}>");
        }
    }
    // The room's name and the sender's display name are text too.
    assert!(!page.contains("<script>alert('nom')"));
    assert!(page.contains("&lt;script&gt;alert(&#x27;nom&#x27;)&lt;&#x2F;script&gt;"));
    assert!(!page.contains("<img src=x onerror"));
    let (_, list) = get_raw(&app.client, "/discussions").await;
    assert!(
        !list.contains("<script>alert"),
        "the list escapes names and previews"
    );
}

#[rocket::async_test]
async fn files_go_up_and_come_back_only_to_members() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    // Not an invitation-only room: Tchap's homeservers encrypt those, and this client cannot yet.
    let room = create_room(&ta, json!({"name": "Fichiers", "preset": "public_chat"})).await;
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, page) = get(&app.client, &room_path(&room)).await;

    // A 1×1 PNG, declared as such.
    let png: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8,
        0xCF, 0xC0, 0xF0, 0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00,
        0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    let upload = |page: String, name: &'static str, kind: &'static str, bytes: Vec<u8>| {
        let client = &app.client;
        let room = room.clone();
        async move {
            let boundary = "----portail-test";
            let mut body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"nonce\"\r\n\r\n{}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: {kind}\r\n\r\n",
                csrf_token(&page),
                {
                    let marker = "name=\"nonce\" value=\"";
                    let last = page.rfind(marker).expect("file nonce") + marker.len();
                    page[last..].split('"').next().expect("nonce").to_owned()
                }
            )
            .into_bytes();
            body.extend_from_slice(&bytes);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let res = client
                .post(format!("{}/fichier", room_path(&room)))
                .header(
                    ContentType::parse_flexible(&format!(
                        "multipart/form-data; boundary={boundary}"
                    ))
                    .expect("type"),
                )
                .body(body)
                .dispatch()
                .await;
            let status = res.status();
            let location = res.headers().get_one("Location").map(str::to_owned);
            (
                status,
                location,
                res.into_string().await.unwrap_or_default(),
            )
        }
    };
    let (status, location, _) = upload(page.clone(), "photo.png", "image/png", png.to_vec()).await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(
        location,
        Some(format!("{}?fait=file#dernier", room_path(&room)))
    );
    let (_, _, page) = get(&app.client, &format!("{}?fait=file", room_path(&room))).await;
    assert!(page.contains("Fichier envoyé."));
    let marker = "<img class=\"portal-thumb\" src=\"";
    let at = page.find(marker).expect("the image is shown") + marker.len();
    let thumb = page[at..].split('"').next().expect("src").to_owned();
    assert!(thumb.starts_with("/discussions/media/"), "{thumb}");
    assert!(page.contains("alt=\"Image : photo.png\""));
    let full = thumb.trim_end_matches("?vignette=1").to_owned();
    for path in [&thumb, &full] {
        let res = app.client.get(path.clone()).dispatch().await;
        assert_eq!(res.status(), Status::Ok, "{path}");
        assert_eq!(
            res.headers().get_one("X-Content-Type-Options"),
            Some("nosniff")
        );
        let csp = res
            .headers()
            .get_one("Content-Security-Policy")
            .unwrap_or_default()
            .to_owned();
        assert!(
            csp.contains("sandbox") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert_eq!(res.content_type(), Some(ContentType::PNG));
        assert!(res
            .into_bytes()
            .await
            .unwrap_or_default()
            .starts_with(b"\x89PNG"));
    }

    // A text file: a download link with its size, served as an attachment.
    let (status, _, _) = upload(
        page.clone(),
        "notes.txt",
        "text/plain",
        b"<b>notes</b>".to_vec(),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    assert!(
        page.contains("notes.txt (12 octets)"),
        "{}",
        timeline(&page)
    );
    let marker = "fr-icon-download-line fr-link--icon-left\" href=\"";
    let at = page.find(marker).expect("download link") + marker.len();
    let href = page[at..].split('"').next().expect("href").to_owned();
    let res = app.client.get(href.clone()).dispatch().await;
    assert_eq!(res.status(), Status::Ok);
    let disposition = res
        .headers()
        .get_one("Content-Disposition")
        .unwrap_or_default()
        .to_owned();
    assert!(
        disposition.starts_with("attachment;") && disposition.contains("notes.txt"),
        "{disposition}"
    );
    assert_eq!(
        res.content_type(),
        Some(ContentType::Binary),
        "never rendered as HTML"
    );

    // Files refused with a message next to the field.
    for (name, kind, bytes, message) in [
        (
            "faux.png",
            "image/png",
            b"pas une image".to_vec(),
            "n’en est pas une",
        ),
        (
            "outil.exe",
            "application/octet-stream",
            b"MZ\x90\x00rest".to_vec(),
            "programmes exécutables",
        ),
        ("vide.txt", "text/plain", vec![], "Choisissez un fichier"),
    ] {
        let (status, _, body) = upload(page.clone(), name, kind, bytes).await;
        assert_eq!(status, Status::UnprocessableEntity, "{name}");
        assert!(body.contains(message), "{name}: {message}");
        assert!(body.contains("aria-describedby=\"file-erreur\""), "{name}");
    }

    // Bob, not a member, cannot fetch it through the proxy; once a member who saw it, he can.
    let bob_browser = app.another_browser().await;
    log_in(&bob_browser, &bob, PASSWORD).await;
    get(&bob_browser, "/discussions").await;
    let res = bob_browser.get(full.clone()).dispatch().await;
    assert_eq!(res.status(), Status::NotFound, "not a member");
    call(
        "POST",
        &ta,
        &format!("/rooms/{}/invite", enc(&room)),
        json!({"user_id": bob}),
    )
    .await;
    call("POST", &tb, &format!("/join/{}", enc(&room)), json!({})).await;
    let res = bob_browser.get(full.clone()).dispatch().await;
    assert_eq!(
        res.status(),
        Status::NotFound,
        "a member who has not seen it yet"
    );
    get(&bob_browser, &room_path(&room)).await;
    let res = bob_browser.get(full.clone()).dispatch().await;
    assert_eq!(res.status(), Status::Ok, "a member who saw it in the room");
    call(
        "POST",
        &tb,
        &format!("/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await;
    get(&bob_browser, "/discussions").await;
    let res = bob_browser.get(full.clone()).dispatch().await;
    assert_eq!(res.status(), Status::NotFound, "no longer a member");
    // Logged out: the login page, not the file.
    let anonymous = app.another_browser().await;
    let res = anonymous.get(full.clone()).dispatch().await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(
        res.headers().get_one("Location"),
        Some(format!("/connexion?next={}", enc(&full)).as_str())
    );
}

#[rocket::async_test]
async fn agents_create_join_invite_leave_and_start_direct_chats() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    // An agent whose Matrix ID is the one Tchap derives from her address.
    let tag = random_tag();
    let jeanne_email = format!("jeanne.{tag}@numerique.gouv.fr");
    let (_, jeanne, _) = register_exact(
        &format!("jeanne.{tag}-numerique.gouv.fr"),
        PASSWORD,
        Some("Jeanne Petit"),
        false,
    )
    .await;
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;

    // Create: errors tied to fields, input kept; then a forum.
    let (_, _, form) = get(&app.client, "/discussions/nouveau").await;
    assert_eq!(title(&form), "Créer un salon — Portail Tchap");
    let (status, _, again) = post_form(
        &app.client,
        "/discussions/nouveau",
        format!(
            "csrf_token={}&name=&topic={}&kind=",
            csrf_token(&form),
            enc("Un sujet")
        ),
    )
    .await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(
        again.contains("Donnez un nom au salon.") && again.contains("Choisissez le type de salon.")
    );
    assert!(again.contains(">Un sujet</textarea>"));
    let (status, location, _) = post_form(
        &app.client,
        "/discussions/nouveau",
        format!(
            "csrf_token={}&name={}&topic={}&kind=forum",
            csrf_token(&form),
            enc(&format!("Forum des essais {tag}")),
            enc("Pour tester")
        ),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let location = location.expect("to the room");
    assert!(location.ends_with("?fait=created"), "{location}");
    let (_, _, page) = get(&app.client, &location).await;
    assert!(
        page.contains("Salon créé.") && page.contains(">Forum<"),
        "{page}"
    );
    let forum_path = location.trim_end_matches("?fait=created").to_owned();

    // Bob finds it in the public rooms and joins; bad addresses get messages, input kept.
    let bob_browser = app.another_browser().await;
    log_in(&bob_browser, &bob, PASSWORD).await;
    let (_, _, search) = get(&bob_browser, &format!("/discussions/rejoindre?q={tag}")).await;
    assert!(
        search.contains(&format!("Forum des essais {tag}")) && search.contains("Pour tester"),
        "{search}"
    );
    for (salon, message) in [
        ("pas une adresse", "Ce n’est pas une adresse de salon"),
        (
            "#inexistant:localhost",
            "Aucun salon ne porte cette adresse.",
        ),
        ("", "Indiquez l’adresse"),
    ] {
        let (status, _, again) = post_form(
            &bob_browser,
            "/discussions/rejoindre",
            format!("csrf_token={}&salon={}", csrf_token(&search), enc(salon)),
        )
        .await;
        assert_eq!(status, Status::UnprocessableEntity, "{salon}");
        assert!(again.contains(message), "{salon}");
        assert!(again.contains(&format!("value=\"{salon}\"")), "input kept");
    }
    let marker = "type=\"hidden\" name=\"salon\" value=\"";
    let at = search.find(marker).expect("a join button") + marker.len();
    let forum_id = search[at..].split('"').next().expect("room ID").to_owned();
    let (status, location, _) = post_form(
        &bob_browser,
        "/discussions/rejoindre",
        format!(
            "csrf_token={}&salon={}",
            csrf_token(&search),
            enc(&forum_id)
        ),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(location, Some(format!("{forum_path}?fait=joined")));

    // Leave, after a confirmation page.
    let (_, _, confirm) = get(&bob_browser, &format!("{forum_path}/quitter")).await;
    assert_eq!(
        title(&confirm),
        format!("Quitter « Forum des essais {tag} » ? — Portail Tchap")
    );
    let (status, location, _) = post_form(
        &bob_browser,
        &format!("{forum_path}/quitter"),
        format!("csrf_token={}", csrf_token(&confirm)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(location.as_deref(), Some("/discussions?fait=left"));
    let (_, _, list) = get(&bob_browser, "/discussions?fait=left").await;
    assert!(
        list.contains("Vous avez quitté le salon.")
            && !list.contains(&format!("Forum des essais {tag}"))
    );
    let (status, _, _) = get(&bob_browser, &forum_path).await;
    assert_eq!(status, Status::NotFound);

    // Invite Bob back by his Matrix ID; an unknown address is said so.
    let (_, _, form) = get(&app.client, &format!("{forum_path}/inviter")).await;
    let (status, _, again) = post_form(
        &app.client,
        &format!("{forum_path}/inviter"),
        format!(
            "csrf_token={}&contact={}",
            csrf_token(&form),
            enc("personne@numerique.gouv.fr")
        ),
    )
    .await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(again.contains("Aucun compte Tchap ne correspond"));
    assert!(again.contains("value=\"personne@numerique.gouv.fr\""));
    let (status, location, _) = post_form(
        &app.client,
        &format!("{forum_path}/inviter"),
        format!("csrf_token={}&contact={}", csrf_token(&form), enc(&bob)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(location, Some(format!("{forum_path}?fait=invite")));
    let (_, _, list) = get(&bob_browser, "/discussions").await;
    let invites = &list[..list
        .find("Vos salons et discussions")
        .expect("joined section")];
    assert!(
        invites.contains(&format!("Forum des essais {tag}")),
        "Bob is invited: {invites}"
    );

    // A direct chat by email address (Tchap's derived ID), recorded in m.direct; again → same room.
    let (_, _, form) = get(&app.client, "/discussions/direct").await;
    for (contact, message) in [
        ("n'importe quoi", "Saisissez une adresse e-mail"),
        ("inconnu@numerique.gouv.fr", "Aucun compte Tchap"),
        (alice.as_str(), "C’est votre propre compte"),
    ] {
        let (status, _, again) = post_form(
            &app.client,
            "/discussions/direct",
            format!("csrf_token={}&contact={}", csrf_token(&form), enc(contact)),
        )
        .await;
        assert_eq!(status, Status::UnprocessableEntity, "{contact}");
        assert!(again.contains(message), "{contact}: {message}");
    }
    let start = || async {
        post_form(
            &app.client,
            "/discussions/direct",
            format!(
                "csrf_token={}&contact={}",
                csrf_token(&form),
                enc(&jeanne_email)
            ),
        )
        .await
    };
    let (status, first, _) = start().await;
    assert_eq!(status, Status::SeeOther);
    let first = first.expect("to the new chat");
    let dm_path = first.trim_end_matches("?fait=created").to_owned();
    let ta = token_of(&alice, PASSWORD).await;
    let direct = call(
        "GET",
        &ta,
        &format!("/user/{}/account_data/m.direct", enc(&alice)),
        json!({}),
    )
    .await;
    let dm_room: Value = direct[&jeanne].clone();
    assert_eq!(dm_room.as_array().map(Vec::len), Some(1), "{direct}");
    assert_eq!(room_path(dm_room[0].as_str().expect("room")), dm_path);
    let invite = call(
        "GET",
        &ta,
        &format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(dm_room[0].as_str().expect("room")),
            enc(&jeanne)
        ),
        json!({}),
    )
    .await;
    assert_eq!(
        (invite["membership"].as_str(), invite["is_direct"].as_bool()),
        (Some("invite"), Some(true)),
        "Jeanne's clients see a direct chat: {invite}"
    );
    let (status, again, _) = start().await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(
        again,
        Some(dm_path.clone()),
        "the existing chat, not a second one"
    );
    let (_, _, list) = get(&app.client, "/discussions").await;
    assert!(
        list.contains("Discussion directe"),
        "typed as a direct chat"
    );
}

#[rocket::async_test]
async fn two_hundred_rooms_cost_one_full_sync_then_only_what_changed() {
    let (_, dana) = new_user("dana", PASSWORD, Some("Dana")).await;
    let td = token_of(&dana, PASSWORD).await;
    let mut last = String::new();
    for n in 0..200 {
        last = create_room(&td, json!({"name": format!("Salon {n:03}")})).await;
    }
    let app = TestApp::new().await;
    log_in(&app.client, &dana, PASSWORD).await;
    let h = hs(&app.client);
    let (calls, bytes) = (h.calls(), h.received());
    let (_, _, page) = get(&app.client, "/discussions").await;
    assert_eq!(h.calls() - calls, 1);
    let full = h.received() - bytes;
    assert!(page.contains("page 1 sur 4"), "200 rooms, 50 per page");
    send(
        &td,
        &last,
        json!({"msgtype": "m.text", "body": "du nouveau"}),
    )
    .await;
    for n in 2..=4 {
        let (calls, bytes) = (h.calls(), h.received());
        let (status, _, page) = get(&app.client, &format!("/discussions?page={n}")).await;
        assert_eq!(status, Status::Ok);
        assert!(page.contains(&format!("page {n} sur 4")));
        assert_eq!(h.calls() - calls, 1, "one call per page");
        let incremental = h.received() - bytes;
        assert!(
            incremental * 20 < full,
            "page {n}: {incremental} bytes against {full} for the first, full sync"
        );
    }
    let (_, _, page) = get(&app.client, "/discussions").await;
    let first = &page[page.find("Vos salons").expect("list")..];
    assert!(
        first.find("Salon 199").expect("latest room")
            < first.find("Salon 000").unwrap_or(usize::MAX),
        "the room with the newest message first"
    );
    assert!(first.contains("du nouveau"));
}

#[rocket::async_test]
async fn a_direct_chat_with_an_unknown_or_unreachable_id_is_refused_on_the_field_and_leaves_no_room(
) {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let ta = token_of(&alice, PASSWORD).await;
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let joined_rooms = || async {
        let mut rooms: Vec<String> = call("GET", &ta, "/joined_rooms", json!({})).await
            ["joined_rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        rooms.sort();
        rooms
    };
    let before = joined_rooms().await;
    let (_, _, form) = get(&app.client, "/discussions/direct").await;
    let tag = random_tag();
    for (contact, message) in [
        // No such account on the agent's own homeserver.
        (
            format!("@personne-{tag}:localhost"),
            "Aucun compte Tchap ne correspond",
        ),
        // Another server, which the agent's homeserver cannot reach (no federation here): the
        // invitation fails after the room was made, which is left and forgotten.
        (
            format!("@agent-{tag}:hors-ligne.example"),
            "ne peut pas être invitée à une discussion directe",
        ),
    ] {
        let calls = hs(&app.client).calls();
        let (status, _, again) = post_form(
            &app.client,
            "/discussions/direct",
            format!("csrf_token={}&contact={}", csrf_token(&form), enc(&contact)),
        )
        .await;
        assert_eq!(status, Status::UnprocessableEntity, "{contact}: {again}");
        assert_eq!(
            title(&again),
            "Erreur : Nouvelle discussion directe — Portail Tchap"
        );
        assert!(again.contains(message), "{contact}: {message} in {again}");
        assert!(
            again.contains(&format!("value=\"{contact}\"")),
            "{contact}: input kept"
        );
        assert!(
            again.contains("aria-describedby=\"contact-erreur\""),
            "{contact}: the message is tied to the field"
        );
        assert!(
            hs(&app.client).calls() > calls,
            "{contact}: checked on the agent's homeserver"
        );
        assert_eq!(
            joined_rooms().await,
            before,
            "{contact}: no room left behind"
        );
    }
    let (_, _, list) = get(&app.client, "/discussions").await;
    assert!(
        !list.contains("Discussion directe"),
        "no direct chat in the list: {list}"
    );
}

#[rocket::async_test]
async fn the_same_image_twice_on_a_page_is_remembered_once() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let ta = token_of(&alice, PASSWORD).await;
    let room = create_room(&ta, json!({"name": "Images", "preset": "public_chat"})).await;
    let img = "<img src=\"mxc://localhost/MemeImage\" alt=\"schéma\">";
    send(
        &ta,
        &room,
        json!({"msgtype": "m.text", "body": "deux fois", "format": "org.matrix.custom.html",
               "formatted_body": format!("{img} et encore {img}")}),
    )
    .await;
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (status, _, page) = get(&app.client, &room_path(&room)).await;
    assert_eq!(status, Status::Ok, "{page}");
    assert!(timeline(&page).contains("deux fois") || timeline(&page).contains("et encore"));
    let mut conn = app.db.conn().await;
    let remembered: i64 = tchap_portal::db::schema::chat_media::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(remembered, 1, "the image is remembered once");
}
