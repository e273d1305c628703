//! AudioConf inside a Tchap room, against the real Synapse, PostgreSQL and SMTP server: the line is
//! posted in the room, a second press reuses it, the IVR accepts its PIN, closing it posts that it
//! is closed and the IVR refuses the PIN; refusals for encrypted rooms, foreign domains, no email.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::Status;
use serde_json::{json, Value};
use tchap_portal::db::schema::audioconf_conferences;

use crate::audioconf::{app, app_figment, book_direct, ivr, settings_of, BRIDGE_SECRET, NUMBER};
use crate::chat_room::{enc, room_path};
use crate::common::matrix::{call, create_room, new_user, random_tag, set_email, token_of};
use crate::common::smtp::{parse, SmtpServer};
use crate::common::{csrf_token, field, get, log_in, post_form, title};

const PASSWORD: &str = "Salon-pass-42";

/// The room's messages as the homeserver has them, newest first.
async fn messages(token: &str, room: &str) -> Vec<Value> {
    let res = call(
        "GET",
        token,
        &format!("/rooms/{}/messages?dir=b&limit=50", enc(room)),
        json!({}),
    )
    .await;
    res["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"].clone())
        .collect()
}

/// The PIN an announcement gives ("… le code 123 456 789 suivi de #").
fn pin_in(body: &str) -> String {
    let at = body.find("le code ").expect("a code in the message") + "le code ".len();
    body[at..]
        .split(" suivi")
        .next()
        .expect("pin")
        .replace(' ', "")
}

async fn press(
    client: &rocket::local::asynchronous::Client,
    room: &str,
    page: &str,
) -> (Status, Option<String>, String) {
    post_form(
        client,
        &format!("{}/audioconference", room_path(room)),
        format!("csrf_token={}&jour=", csrf_token(page)),
    )
    .await
}

async fn rooms_conferences(app: &crate::common::TestApp) -> i64 {
    let mut conn = app.db.conn().await;
    audioconf_conferences::table
        .filter(audioconf_conferences::via.eq("room"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count")
}

#[rocket::async_test]
async fn a_room_starts_a_conference_reuses_it_and_closes_it() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let tag = random_tag();
    let email = format!("alice.{tag}@numerique.gouv.fr");
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    set_email(&alice, &email).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    let room = create_room(
        &ta,
        json!({"name": "Réunion d’équipe", "preset": "public_chat"}),
    )
    .await;
    call("POST", &tb, &format!("/join/{}", enc(&room)), json!({})).await;
    log_in(&app.client, &alice, PASSWORD).await;

    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    assert!(page.contains("Démarrer une audioconférence"));
    let (status, location, _) = press(&app.client, &room, &page).await;
    assert_eq!(status, Status::SeeOther);
    assert_eq!(
        location,
        Some(format!(
            "{}?fait=audioconf#audioconference",
            room_path(&room)
        ))
    );

    // Posted in the room, as text and HTML with a tel: link; the same line on the page.
    let posted = messages(&tb, &room).await;
    let announce = &posted[0];
    let body = announce["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("01 89 00 00 00") && body.contains("jusqu’à 23:59"),
        "{body}"
    );
    let pin = pin_in(body);
    assert_eq!(pin.len(), 9, "{body}");
    let html = announce["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains(&format!("href=\"tel:{NUMBER},,{pin}%23\"")),
        "{html}"
    );
    let (_, _, page) = get(&app.client, &format!("{}?fait=audioconf", room_path(&room))).await;
    assert!(page.contains("Audioconférence réservée"));
    assert!(page.contains(&format!("{} {} {}", &pin[..3], &pin[3..6], &pin[6..])));
    assert!(page.contains("Fermer la ligne"));
    let timeline = &page[page.find("portal-timeline").expect("timeline")..];
    assert!(
        timeline.contains(&format!("href=\"tel:{NUMBER},,{pin}%23\"")),
        "the room page shows the posted tel: link"
    );

    // The IVR accepts the PIN; the agent got the details mail with its calendar invite.
    let (status, answer, _) = ivr(&app, BRIDGE_SECRET, NUMBER, &pin, "+33600000000").await;
    assert_eq!(status, Status::Ok, "{answer}");
    let mails = smtp.wait_for(1);
    let mail = parse(mails.last().expect("the details mail"));
    assert!(mail.to_string().contains(&email), "{mail}");
    assert_eq!(
        mail["attachments"][0]["filename"], "audioconference.ics",
        "with its calendar invite"
    );
    assert!(mail["attachments"][0]["body"]
        .as_str()
        .unwrap_or_default()
        .contains("BEGIN:VCALENDAR"));

    // Pressing again (or another member pressing) shows the same line: no second booking.
    let (status, location, _) = press(&app.client, &room, &page).await;
    assert_eq!(status, Status::SeeOther);
    assert!(location
        .unwrap_or_default()
        .contains("fait=audioconf_existing"));
    let bob_browser = app.another_browser().await;
    log_in(&bob_browser, &bob, PASSWORD).await;
    let (_, _, bob_page) = get(&bob_browser, &room_path(&room)).await;
    let (status, location, _) = press(&bob_browser, &room, &bob_page).await;
    assert_eq!(
        status,
        Status::SeeOther,
        "Bob has no email, but the line exists"
    );
    assert!(location
        .unwrap_or_default()
        .contains("fait=audioconf_existing"));
    let (_, _, bob_page) = get(&bob_browser, &room_path(&room)).await;
    let grouped = format!("{} {} {}", &pin[..3], &pin[3..6], &pin[6..]);
    assert!(
        section(&bob_page).contains(&grouped),
        "members see the room's line"
    );
    assert!(
        !bob_page.contains("Fermer la ligne"),
        "only the agent who started it closes it"
    );
    assert_eq!(rooms_conferences(&app).await, 1);
    let announcements = |m: &[Value]| {
        m.iter()
            .filter(|c| {
                c["body"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Audioconférence du")
            })
            .count()
    };
    assert_eq!(announcements(&messages(&tb, &room).await), 1);

    // `/audioconf demain` in the message box: tomorrow's line; a day not understood: a message.
    let send = |text: &'static str, page: String| {
        let client = &app.client;
        let room = room.clone();
        async move {
            post_form(
                client,
                &format!("{}/envoyer", room_path(&room)),
                format!(
                    "csrf_token={}&nonce={}&message={}",
                    csrf_token(&page),
                    field(&page, "nonce"),
                    enc(text)
                ),
            )
            .await
        }
    };
    let (status, location, _) = send("/audioconf demain", page.clone()).await;
    assert_eq!(status, Status::SeeOther);
    assert!(location.unwrap_or_default().contains("fait=audioconf"));
    assert_eq!(rooms_conferences(&app).await, 2);
    assert_eq!(announcements(&messages(&tb, &room).await), 2);
    let (status, _, again) = send("/audioconf la semaine prochaine", page.clone()).await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(again.contains("Ce jour n’est pas compris"));
    assert!(
        again.contains(">/audioconf la semaine prochaine</textarea>"),
        "text kept"
    );

    // Bob cannot close Alice's line; Alice closes it: the room is told, the IVR refuses the PIN.
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    let conference = field(&page, "conference");
    let (status, _, _) = post_form(
        &bob_browser,
        &format!("{}/audioconference/fermer", room_path(&room)),
        format!(
            "csrf_token={}&conference={conference}",
            csrf_token(&bob_page)
        ),
    )
    .await;
    assert_eq!(status, Status::Forbidden);
    let (status, location, _) = post_form(
        &app.client,
        &format!("{}/audioconference/fermer", room_path(&room)),
        format!("csrf_token={}&conference={conference}", csrf_token(&page)),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    assert!(location
        .unwrap_or_default()
        .contains("fait=audioconf_closed"));
    let last = &messages(&tb, &room).await[0];
    assert!(
        last["body"]
            .as_str()
            .unwrap_or_default()
            .contains("est fermée"),
        "{last}"
    );
    let (status, _, _) = ivr(&app, BRIDGE_SECRET, NUMBER, &pin, "+33600000000").await;
    assert_ne!(
        status,
        Status::Ok,
        "the closed line's PIN no longer opens it"
    );
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    assert!(
        !section(&page).contains(&grouped),
        "the closed line is gone from the page"
    );
}

/// The room page's conference section.
fn section(page: &str) -> &str {
    let start = page
        .find("id=\"audioconference\"")
        .expect("conference section");
    let end = page[start..].find("</section>").expect("end") + start;
    &page[start..end]
}

#[rocket::async_test]
async fn a_room_conference_is_refused_in_encrypted_rooms_and_to_foreign_domains() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    set_email(&alice, &format!("alice.{}@numerique.gouv.fr", random_tag())).await;
    let ta = token_of(&alice, PASSWORD).await;
    let secret = create_room(
        &ta,
        json!({"name": "Chiffré", "preset": "private_chat",
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, page) = get(&app.client, &room_path(&secret)).await;
    let (status, _, again) = press(&app.client, &secret, &page).await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(title(&again).starts_with("Erreur"));
    assert!(again.contains("le code de la conférence n’y sera pas publié en clair"));
    assert_eq!(rooms_conferences(&app).await, 0);
    assert!(
        messages(&ta, &secret).await.is_empty(),
        "nothing posted in clear"
    );

    // An agent whose address is not in an allowed domain.
    let (_, carol) = new_user("carol", PASSWORD, Some("Carol")).await;
    set_email(&carol, &format!("carol.{}@exemple.com", random_tag())).await;
    let tc = token_of(&carol, PASSWORD).await;
    let room = create_room(
        &tc,
        json!({"name": "Salon de Carol", "preset": "public_chat"}),
    )
    .await;
    let carol_browser = app.another_browser().await;
    log_in(&carol_browser, &carol, PASSWORD).await;
    let (_, _, page) = get(&carol_browser, &room_path(&room)).await;
    let (status, _, again) = press(&carol_browser, &room, &page).await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(again.contains("exemple.com"), "the refused domain is named");
    assert_eq!(rooms_conferences(&app).await, 0);
    assert!(messages(&tc, &room).await.is_empty());
}

#[rocket::async_test]
async fn a_room_conference_is_refused_when_no_line_is_free() {
    let smtp = SmtpServer::start();
    // One number and one-digit PINs: ten conferences this hour take every PIN.
    let app = app(&smtp, |f| f.merge(("portal.audioconf.pin_length", 1))).await;
    let settings = settings_of(&app);
    for i in 0..10 {
        book_direct(&app, &settings, i)
            .await
            .expect("one of the 10 PINs");
    }
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    set_email(&alice, &format!("alice.{}@numerique.gouv.fr", random_tag())).await;
    let ta = token_of(&alice, PASSWORD).await;
    let room = create_room(&ta, json!({"name": "Plein", "preset": "public_chat"})).await;
    log_in(&app.client, &alice, PASSWORD).await;
    let (_, _, page) = get(&app.client, &room_path(&room)).await;
    let (status, _, again) = press(&app.client, &room, &page).await;
    assert_eq!(status, Status::UnprocessableEntity);
    assert!(again.contains("Plus aucune ligne n’est libre pour ce jour"));
    assert_eq!(rooms_conferences(&app).await, 0);
    assert!(messages(&ta, &room).await.is_empty(), "nothing posted");
}

#[rocket::async_test]
async fn two_members_starting_a_conference_at_once_post_one_announcement() {
    let smtp = SmtpServer::start();
    let app = app(&smtp, |f| f).await;
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand")).await;
    set_email(&alice, &format!("alice.{}@numerique.gouv.fr", random_tag())).await;
    set_email(&bob, &format!("bob.{}@numerique.gouv.fr", random_tag())).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    // Bob on another instance of the same portal (same settings, same database).
    let bob_browser = rocket::local::asynchronous::Client::tracked(
        tchap_portal::build(app_figment(&smtp, &app.db)).expect("settings"),
    )
    .await
    .expect("the portal starts");
    log_in(&app.client, &alice, PASSWORD).await;
    log_in(&bob_browser, &bob, PASSWORD).await;

    // Both press "Démarrer une audioconférence" at the same moment, in three rooms.
    for n in 0..3 {
        let room = create_room(
            &ta,
            json!({"name": format!("Réunion {n}"), "preset": "public_chat"}),
        )
        .await;
        call("POST", &tb, &format!("/join/{}", enc(&room)), json!({})).await;
        let (_, _, alice_page) = get(&app.client, &room_path(&room)).await;
        let (_, _, bob_page) = get(&bob_browser, &room_path(&room)).await;
        let before = rooms_conferences(&app).await;
        let (a, b) = rocket::tokio::join!(
            press(&app.client, &room, &alice_page),
            press(&bob_browser, &room, &bob_page)
        );
        let mut notices = vec![];
        for (status, location, body) in [a, b] {
            assert_eq!(status, Status::SeeOther, "room {n}: {body}");
            let location = location.unwrap_or_default();
            notices.push(
                location
                    .split("fait=")
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        notices.sort();
        assert_eq!(
            notices,
            [
                "audioconf#audioconference",
                "audioconf_existing#audioconference"
            ],
            "room {n}: one booked it, the other was shown it"
        );
        assert_eq!(
            rooms_conferences(&app).await,
            before + 1,
            "room {n}: one line"
        );
        let posted: Vec<String> = messages(&tb, &room)
            .await
            .iter()
            .filter_map(|c| c["body"].as_str().map(str::to_owned))
            .filter(|b| b.starts_with("Audioconférence du"))
            .collect();
        assert_eq!(posted.len(), 1, "room {n}: one announcement: {posted:?}");
        let grouped = {
            let pin = pin_in(&posted[0]);
            format!("{} {} {}", &pin[..3], &pin[3..6], &pin[6..])
        };
        for client in [&app.client, &bob_browser] {
            let (_, _, page) = get(client, &room_path(&room)).await;
            assert!(
                section(&page).contains(&grouped),
                "room {n}: both members see the line"
            );
        }
    }
}
