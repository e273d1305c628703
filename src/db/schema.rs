// @generated automatically by Diesel CLI.

diesel::table! {
    account_addresses (address_mac) {
        address_mac -> Bytea,
        matrix_user_id -> Text,
        seen_at -> Timestamptz,
    }
}

diesel::table! {
    audioconf_conferences (id) {
        id -> Int8,
        public_id -> Text,
        email -> Nullable<Text>,
        email_domain -> Text,
        email_hmac -> Bytea,
        number -> Text,
        pin_hmac -> Bytea,
        pin_enc -> Bytea,
        all_day -> Bool,
        starts_at -> Timestamptz,
        ends_at -> Timestamptz,
        cancel_token_hash -> Bytea,
        cancelled_at -> Nullable<Timestamptz>,
        via -> Text,
        lang -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    audioconf_domains (id) {
        id -> Int8,
        rule -> Text,
        added_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    audioconf_requests (id) {
        id -> Int8,
        token_hash -> Bytea,
        email -> Nullable<Text>,
        email_hmac -> Bytea,
        ip_hmac -> Bytea,
        day -> Nullable<Date>,
        duration_minutes -> Nullable<Int4>,
        lang -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    audioconf_rooms (room_id, day) {
        room_id -> Text,
        day -> Date,
        conference_id -> Int8,
        booked_by -> Text,
        event_id -> Nullable<Text>,
        created_at -> Timestamptz,
        announcing_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    chat_media (session_id, mxc) {
        session_id -> Int8,
        mxc -> Text,
        room_id -> Text,
        seen_at -> Timestamptz,
    }
}

diesel::table! {
    chat_rooms (session_id, room_id) {
        session_id -> Int8,
        room_id -> Text,
        membership -> Text,
        name -> Nullable<Text>,
        kind -> Text,
        join_rule -> Nullable<Text>,
        access_rule -> Nullable<Text>,
        is_direct -> Bool,
        encrypted -> Bool,
        inviter -> Nullable<Text>,
        heroes -> Array<Nullable<Text>>,
        last_ts -> Nullable<Timestamptz>,
        last_sender -> Nullable<Text>,
        last_preview -> Nullable<Text>,
        unread -> Int4,
        highlight -> Int4,
    }
}

diesel::table! {
    chat_sync (session_id) {
        session_id -> Int8,
        next_batch -> Text,
        synced_at -> Timestamptz,
    }
}

diesel::table! {
    login_failures (id) {
        id -> Int8,
        key -> Text,
        failed_at -> Timestamptz,
    }
}

diesel::table! {
    oidc_clients (id) {
        id -> Int8,
        client_id -> Text,
        secret_hash -> Nullable<Bytea>,
        name -> Text,
        redirect_uris -> Array<Nullable<Text>>,
        post_logout_redirect_uris -> Array<Nullable<Text>>,
        public -> Bool,
        subject_type -> Text,
        id_token_alg -> Text,
        userinfo_signed -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    oidc_codes (code_hash) {
        code_hash -> Bytea,
        grant_id -> Int8,
        redirect_uri -> Text,
        code_challenge -> Nullable<Text>,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    oidc_consents (id) {
        id -> Int8,
        client_id -> Text,
        matrix_user_id -> Text,
        scopes -> Array<Nullable<Text>>,
        first_at -> Timestamptz,
        last_at -> Timestamptz,
    }
}

diesel::table! {
    oidc_grants (id) {
        id -> Int8,
        client_id -> Text,
        matrix_user_id -> Text,
        sid -> Text,
        scopes -> Array<Nullable<Text>>,
        claims -> Jsonb,
        nonce -> Nullable<Text>,
        auth_time -> Timestamptz,
        amr -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    oidc_keys (id) {
        id -> Int8,
        kid -> Text,
        alg -> Text,
        public_jwk -> Jsonb,
        private_der_enc -> Bytea,
        created_at -> Timestamptz,
        retired_at -> Nullable<Timestamptz>,
        unpublish_at -> Nullable<Timestamptz>,
        active_from -> Timestamptz,
    }
}

diesel::table! {
    oidc_shares (id) {
        id -> Int8,
        client_id -> Text,
        matrix_user_id -> Text,
        claims -> Array<Nullable<Text>>,
        shared_at -> Timestamptz,
    }
}

diesel::table! {
    oidc_tokens (id) {
        id -> Int8,
        token_hash -> Bytea,
        kind -> Text,
        grant_id -> Int8,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        message_id -> Text,
        kind -> Text,
        sender -> Text,
        recipients -> Array<Nullable<Text>>,
        raw -> Bytea,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Int8,
        token_hash -> Bytea,
        matrix_user_id -> Text,
        device_id -> Text,
        homeserver_url -> Text,
        access_token_enc -> Bytea,
        display_name -> Nullable<Text>,
        emails -> Array<Nullable<Text>>,
        auth_time -> Timestamptz,
        amr -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    stable_keys (purpose) {
        purpose -> Text,
        key_enc -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(audioconf_rooms -> audioconf_conferences (conference_id));
diesel::joinable!(chat_media -> sessions (session_id));
diesel::joinable!(chat_rooms -> sessions (session_id));
diesel::joinable!(chat_sync -> sessions (session_id));
diesel::joinable!(oidc_codes -> oidc_grants (grant_id));
diesel::joinable!(oidc_tokens -> oidc_grants (grant_id));

diesel::allow_tables_to_appear_in_same_query!(
    account_addresses,
    audioconf_conferences,
    audioconf_domains,
    audioconf_requests,
    audioconf_rooms,
    chat_media,
    chat_rooms,
    chat_sync,
    login_failures,
    oidc_clients,
    oidc_codes,
    oidc_consents,
    oidc_grants,
    oidc_keys,
    oidc_shares,
    oidc_tokens,
    outbox,
    sessions,
    stable_keys,
);
