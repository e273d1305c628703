//! Tchap Web léger against the real Synapse: the room list, invitations, a revoked token, a
//! homeserver that does not answer.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::Status;
use serde_json::json;
use tchap_portal::chat::hs::Hs;
use tchap_portal::db::schema::{chat_sync, sessions};

use crate::common::matrix::{call, create_room, new_user, send, token_of};
use crate::common::{csrf_token, log_in, title, TestApp};

const PASSWORD: &str = "Salon-pass-42";

async fn get(app: &TestApp, path: &str) -> (Status, Option<String>, String) {
    crate::common::get(&app.client, path).await
}

fn calls(app: &TestApp) -> u64 {
    app.client.rocket().state::<Hs>().expect("hs").calls()
}

async fn answer_invitation(app: &TestApp, page: &str, room_id: &str, decision: &str) {
    let (status, location, _) = crate::common::post_form(
        &app.client,
        "/discussions/invitation",
        format!(
            "csrf_token={}&room_id={}&decision={decision}",
            csrf_token(page),
            urlencode(room_id)
        ),
    )
    .await;
    assert_eq!(status, Status::SeeOther);
    let expected = if decision == "accept" {
        format!("/discussions/{}", urlencode(room_id))
    } else {
        "/discussions".to_owned()
    };
    assert_eq!(location, Some(expected), "accepting opens the room");
}

#[rocket::async_test]
async fn the_room_list_shows_invitations_first_then_rooms_by_activity_with_counts() {
    let (_, alice) = new_user("alice", PASSWORD, Some("Alice Martin [DINUM]")).await;
    let (_, bob) = new_user("bob", PASSWORD, Some("Bob Durand [DINUM]")).await;
    let (ta, tb) = (
        token_of(&alice, PASSWORD).await,
        token_of(&bob, PASSWORD).await,
    );
    create_room(
        &ta,
        json!({"name": "Forum des agents", "preset": "public_chat"}),
    )
    .await;
    let team = create_room(
        &ta,
        json!({"name": "Équipe projet", "preset": "private_chat", "invite": [bob]}),
    )
    .await;
    call(
        "POST",
        &tb,
        &format!("/join/{}", urlencode(&team)),
        json!({}),
    )
    .await;
    send(
        &tb,
        &team,
        json!({"msgtype": "m.text", "body": "Premier message"}),
    )
    .await;
    send(
        &tb,
        &team,
        json!({"msgtype": "m.text", "body": "Alice, tu as vu ?", "m.mentions": {"user_ids": [alice]}}),
    )
    .await;
    let invited = create_room(
        &tb,
        json!({"name": "Invitation de Bob", "preset": "private_chat", "invite": [alice]}),
    )
    .await;

    let app = TestApp::new().await;
    let (status, location, _) = get(&app, "/discussions").await;
    assert_eq!(status, Status::SeeOther, "logged out: to the login page");
    assert_eq!(location.as_deref(), Some("/connexion?next=%2Fdiscussions"));
    log_in(&app.client, &alice, PASSWORD).await;

    let (status, _, page) = get(&app, "/discussions").await;
    assert_eq!(status, Status::Ok, "{page}");
    assert_eq!(title(&page), "Discussions — Portail Tchap");
    let at = |needle: &str| {
        page.find(needle)
            .unwrap_or_else(|| panic!("{needle} on the page"))
    };
    // Invitations first, with who invited; then the room with the latest activity.
    assert!(at("Invitation de Bob") < at("Équipe projet"));
    assert!(at("Équipe projet") < at("Forum des agents"));
    assert!(page.contains(&format!("Invitation de {bob}")));
    let team_item = &page[at("Équipe projet")..at("Forum des agents")];
    assert!(team_item.contains("2 non lu(s)"), "{team_item}");
    assert!(team_item.contains("1 mention(s)"), "{team_item}");
    assert!(team_item.contains("Alice, tu as vu ?"), "{team_item}");
    let forum_item = &page[at("Forum des agents")..];
    assert!(forum_item.contains(">Forum<"), "{forum_item}");
    assert!(team_item.contains(">Salon privé<"));

    // The next page view asks the homeserver once, from where the last one stopped.
    let mut conn = app.db.conn().await;
    let first: String = chat_sync::table
        .select(chat_sync::next_batch)
        .first(&mut conn)
        .await
        .expect("sync position kept");
    send(
        &tb,
        &team,
        json!({"msgtype": "m.text", "body": "Troisième"}),
    )
    .await;
    let before = calls(&app);
    let (_, _, page) = get(&app, "/discussions").await;
    assert_eq!(calls(&app) - before, 1, "one incremental sync per page");
    let second: String = chat_sync::table
        .select(chat_sync::next_batch)
        .first(&mut conn)
        .await
        .expect("position");
    assert_ne!(first, second);
    assert!(page.contains("3 non lu(s)"));
    assert!(
        page.contains("Forum des agents"),
        "rooms kept between syncs"
    );

    // Accepting an invitation joins the room; declining one makes it disappear.
    answer_invitation(&app, &page, &invited, "accept").await;
    let declined = create_room(
        &tb,
        json!({"name": "À refuser", "preset": "private_chat", "invite": [alice]}),
    )
    .await;
    let (_, _, page) = get(&app, "/discussions").await;
    assert!(page.contains("À refuser"), "a new invitation arrives");
    let joined = page
        .find("Vos salons et discussions")
        .expect("joined rooms");
    assert!(
        page[joined..].contains("Invitation de Bob"),
        "the accepted room is among the joined ones"
    );
    for body in [
        format!("room_id={}&decision=maybe", urlencode(&declined)),
        "room_id=not-a-room&decision=accept".to_owned(),
    ] {
        let (status, _, _) = crate::common::post_form(
            &app.client,
            "/discussions/invitation",
            format!("csrf_token={}&{body}", csrf_token(&page)),
        )
        .await;
        assert_eq!(status, Status::NotFound, "{body}");
    }
    answer_invitation(&app, &page, &declined, "decline").await;
    let (_, _, page) = get(&app, "/discussions").await;
    assert!(!page.contains("À refuser"));
    assert!(!page.contains(">Invitations<"));
}

fn urlencode(s: &str) -> String {
    tchap_portal::accounts::matrix::percent_encode(s)
}

#[rocket::async_test]
async fn a_token_revoked_elsewhere_or_a_silent_homeserver_gets_a_clear_answer() {
    let (_, carol) = new_user("carol", PASSWORD, None).await;
    let app = TestApp::new().await;
    log_in(&app.client, &carol, PASSWORD).await;
    let (status, _, _) = get(&app, "/discussions").await;
    assert_eq!(status, Status::Ok);

    // The homeserver does not answer: 503, a retry link, never a 500.
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
    let (status, _, page) = get(&app, "/discussions").await;
    assert_eq!(status, Status::ServiceUnavailable);
    assert_eq!(title(&page), "Tchap ne répond pas — Portail Tchap");
    assert!(page.contains("href=\"/discussions\""));
    diesel::update(sessions::table)
        .set(sessions::homeserver_url.eq(&real))
        .execute(&mut conn)
        .await
        .expect("back");

    // Logged out of every device from another app: back to the login page, which says why.
    let other = token_of(&carol, PASSWORD).await;
    call("POST", &other, "/logout/all", json!({})).await;
    let (status, location, _) = get(&app, "/discussions").await;
    assert_eq!(status, Status::SeeOther);
    let location = location.expect("to login");
    assert_eq!(location, "/connexion?next=%2Fdiscussions&fin=1");
    let (_, _, page) = get(&app, &location).await;
    assert!(page.contains("Votre session Tchap a été fermée"));
    let left: i64 = sessions::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0, "the portal session ended too");
}

#[rocket::async_test]
async fn nul_and_control_characters_from_the_homeserver_never_break_a_page() {
    let (_, alice) = new_user("nul", PASSWORD, None).await;
    let ta = token_of(&alice, PASSWORD).await;
    let room = create_room(
        &ta,
        json!({"name": "Salon\u{0}piégé\u{1}\u{85}", "topic": "a\u{0}b", "preset": "public_chat"}),
    )
    .await;
    send(
        &ta,
        &room,
        json!({"msgtype": "m.text", "body": "bonjour\u{0} à\u{7} tous\u{FFFE}",
               "format": "org.matrix.custom.html",
               "formatted_body": "<b>bon\u{0}jour</b> <a title=\"t\" href=\"javascript:alert(1)\">lien</a>"}),
    )
    .await;
    call(
        "PUT",
        &ta,
        &format!("/profile/{}/displayname", urlencode(&alice)),
        json!({"displayname": "Alice\u{0}\u{1b}[31m"}),
    )
    .await;
    let app = TestApp::new().await;
    log_in(&app.client, &alice, PASSWORD).await;
    for round in 0..2 {
        let (status, _, list) = get(&app, "/discussions").await;
        assert_eq!(status, Status::Ok, "room list, round {round}: {list}");
        assert!(
            list.contains("Salonpiégé"),
            "the name without its NUL: {list}"
        );
        assert!(!list.contains('\u{0}') && !list.contains('\u{1}'));
        let (status, _, page) = get(&app, &crate::chat_room::room_path(&room)).await;
        assert_eq!(status, Status::Ok, "room page, round {round}: {page}");
        assert!(page.contains("bonjour"), "{page}");
        assert!(!page.contains('\u{0}') && !page.contains('\u{FFFE}'));
        assert!(!page.contains("javascript:"), "no active link: {page}");
    }
}

#[rocket::async_test]
async fn one_session_loading_the_room_list_thirty_times_at_once_gets_no_error() {
    let (_, erin) = new_user("erin", PASSWORD, Some("Erin")).await;
    let te = token_of(&erin, PASSWORD).await;
    let mut rooms = vec![];
    for n in 0..20 {
        rooms.push(create_room(&te, json!({"name": format!("Salon {n:02}")})).await);
    }
    let db = crate::common::TestDb::new().await;
    let fig = crate::common::figment(&db).merge(("portal.db.pool_size", 12));
    let app = TestApp::with_figment(db, fig).await;
    log_in(&app.client, &erin, PASSWORD).await;

    // Two tabs and a double click, many times over: the first burst meets no sync position yet, the
    // next ones start from the same position with every room changed.
    for round in 0..3 {
        if round > 0 {
            for (n, room) in rooms.iter().enumerate() {
                send(
                    &te,
                    room,
                    json!({"msgtype": "m.text", "body": format!("tour {round} salon {n:02}")}),
                )
                .await;
            }
        }
        let loads = (0..30).map(|_| app.client.get("/discussions").dispatch());
        let answers = rocket::futures::future::join_all(loads).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().code).collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "round {round}: every load answered 200: {statuses:?}"
        );
    }

    // Afterwards the list is whole and up to date, and the next load is one incremental sync.
    let before = calls(&app);
    let (status, _, page) = get(&app, "/discussions").await;
    assert_eq!(status, Status::Ok);
    assert_eq!(calls(&app) - before, 1);
    for n in 0..20 {
        assert!(
            page.contains(&format!("tour 2 salon {n:02}")),
            "room {n} with its latest message: {page}"
        );
    }
    let mut conn = app.db.conn().await;
    let positions: i64 = chat_sync::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(positions, 1, "one sync position for the session");
    let listed: i64 = tchap_portal::db::schema::chat_rooms::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(listed, 20, "each room once");
}
