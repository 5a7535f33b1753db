// Diesel table definitions; kept in step with migrations/ by hand (see diesel.toml).

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        username -> Nullable<Text>,
        first_name -> Text,
        last_name -> Text,
        password_hash -> Text,
        role -> Text,
        active -> Bool,
        create_time -> Timestamptz,
        update_time -> Timestamptz,
        last_login_time -> Nullable<Timestamptz>,
        email_verified -> Bool,
        email_verify_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        generation -> Int4,
        create_time -> Timestamptz,
        last_use_time -> Timestamptz,
        idle_expire_time -> Timestamptz,
        expire_time -> Timestamptz,
        revoke_time -> Nullable<Timestamptz>,
        revoke_reason -> Nullable<Text>,
        user_agent -> Text,
        ip_address -> Text,
        replay_box -> Nullable<Bytea>,
        replay_until -> Nullable<Timestamptz>,
        rotate_ip -> Nullable<Text>,
        access_expire_time -> Timestamptz,
        amr -> Array<Text>,
        refresh_hash -> Nullable<Bytea>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        generation -> Int4,
        create_time -> Timestamptz,
        spend_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        algorithm -> Text,
        private_key -> Bytea,
        public_key -> Bytea,
        create_time -> Timestamptz,
        activate_time -> Timestamptz,
        retire_time -> Nullable<Timestamptz>,
        encrypted -> Bool,
    }
}

diesel::table! {
    server_secrets (name) {
        name -> Text,
        value -> Bytea,
        create_time -> Timestamptz,
        encrypted -> Bool,
    }
}

diesel::table! {
    service_keys (id) {
        id -> Uuid,
        name -> Text,
        key_hash -> Bytea,
        creator_id -> Nullable<Uuid>,
        create_time -> Timestamptz,
        last_use_time -> Nullable<Timestamptz>,
        revoke_time -> Nullable<Timestamptz>,
        trusted_proxy -> Bool,
        allowed_cidrs -> Array<Text>,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(service_keys -> users (creator_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    refresh_tokens,
    signing_keys,
    server_secrets,
    service_keys,
);

diesel::table! {
    audit_events (id) {
        id -> Uuid,
        user_id -> Nullable<Uuid>,
        actor_id -> Nullable<Uuid>,
        kind -> Text,
        ip_address -> Text,
        user_agent -> Text,
        detail -> Text,
        create_time -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(audit_events, users);

diesel::table! {
    login_throttle (key, ip) {
        key -> Text,
        ip -> Text,
        consecutive_failures -> Int4,
        last_failure_time -> Timestamptz,
    }
}

diesel::table! {
    login_failures (id) {
        key -> Text,
        create_time -> Timestamptz,
        id -> Int8,
    }
}

diesel::table! {
    login_guard (key) {
        key -> Text,
        next_check_time -> Nullable<Timestamptz>,
        slot_delay_secs -> Int4,
        last_attempt_time -> Timestamptz,
    }
}

diesel::table! {
    login_known_clients (key, client) {
        key -> Text,
        client -> Text,
        last_success_time -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Uuid,
        create_time -> Timestamptz,
        recipient -> Text,
        subject -> Text,
        kind -> Text,
        body -> Bytea,
        body_sealed -> Bool,
        live_link -> Bool,
        message_id -> Text,
        attempts -> Int4,
        next_attempt_time -> Timestamptz,
        last_error -> Nullable<Text>,
        sent_time -> Nullable<Timestamptz>,
        failed_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    account_tokens (id) {
        id -> Uuid,
        user_id -> Uuid,
        purpose -> Text,
        token_hash -> Bytea,
        new_email -> Nullable<Text>,
        create_time -> Timestamptz,
        expire_time -> Timestamptz,
        use_time -> Nullable<Timestamptz>,
        void_time -> Nullable<Timestamptz>,
        session_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    verification_requests (id) {
        id -> Uuid,
        email_hash -> Bytea,
        user_id -> Nullable<Uuid>,
        client -> Text,
        create_time -> Timestamptz,
        process_time -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(account_tokens -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(account_tokens, users);

diesel::table! {
    password_reset_requests (id) {
        id -> Uuid,
        email -> Text,
        client_address -> Text,
        create_time -> Timestamptz,
        processed_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    user_totp (user_id) {
        user_id -> Uuid,
        seed -> Nullable<Bytea>,
        seed_sealed -> Bool,
        pending_seed -> Nullable<Bytea>,
        pending_sealed -> Bool,
        enable_time -> Nullable<Timestamptz>,
        last_step -> Int8,
        failures -> Int4,
        lock_level -> Int4,
        locked_until -> Nullable<Timestamptz>,
        update_time -> Timestamptz,
    }
}

diesel::table! {
    recovery_codes (code_hash) {
        code_hash -> Bytea,
        user_id -> Uuid,
        create_time -> Timestamptz,
        use_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    mfa_challenges (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        create_time -> Timestamptz,
        expire_time -> Timestamptz,
        use_time -> Nullable<Timestamptz>,
        failures -> Int4,
        ip_address -> Text,
        user_agent -> Text,
    }
}
