-- catalog schema after all migrations; regenerate with python -m services.catalog.schema_dump URL
column alias_history.id bigint
column alias_history.policy_id bigint
column alias_history.tenant character varying(64)
column alias_history.policy text
column alias_history.alias character varying(64)
column alias_history.from_number integer
column alias_history.to_number integer
column alias_history.action character varying(16)
column alias_history.actor character varying(64)
column alias_history.reason text
column alias_history.since timestamp with time zone
column alias_history.until timestamp with time zone
column alias_moves.id bigint NOT NULL DEFAULT nextval('alias_moves_id_seq'::regclass)
column alias_moves.policy_id bigint NOT NULL
column alias_moves.alias character varying(64) NOT NULL
column alias_moves.from_number integer
column alias_moves.to_number integer
column alias_moves.action character varying(16) NOT NULL
column alias_moves.actor character varying(64) NOT NULL
column alias_moves.reason text NOT NULL
column alias_moves.at timestamp with time zone NOT NULL
column aliases.policy_id bigint NOT NULL
column aliases.name character varying(64) NOT NULL
column aliases.revision_number integer NOT NULL
column aliases.updated_at timestamp with time zone NOT NULL
column api_keys.id bigint NOT NULL DEFAULT nextval('api_keys_id_seq'::regclass)
column api_keys.key_id character varying(12) NOT NULL
column api_keys.tenant_id bigint NOT NULL
column api_keys.name character varying(128) NOT NULL
column api_keys.role character varying(16) NOT NULL
column api_keys.secret_hash character varying(64) NOT NULL
column api_keys.created_at timestamp with time zone NOT NULL
column api_keys.revoked_at timestamp with time zone
column api_keys.scopes character varying(64) NOT NULL
column api_keys.expires_at timestamp with time zone
column audit_events.id bigint NOT NULL DEFAULT nextval('audit_events_id_seq'::regclass)
column audit_events.at timestamp with time zone NOT NULL
column audit_events.tenant_id bigint
column audit_events.actor character varying(64) NOT NULL
column audit_events.action character varying(32) NOT NULL
column audit_events.policy_id bigint
column audit_events.revision_number integer
column audit_events.details jsonb NOT NULL
column audit_log.id bigint
column audit_log.at timestamp with time zone
column audit_log.tenant character varying(64)
column audit_log.actor character varying(64)
column audit_log.key_name character varying(128)
column audit_log.action character varying(32)
column audit_log.policy text
column audit_log.revision_number integer
column audit_log.details jsonb
column base_models.id bigint NOT NULL DEFAULT nextval('base_models_id_seq'::regclass)
column base_models.name character varying(128) NOT NULL
column base_models.architecture character varying(64) NOT NULL
column base_models.config jsonb NOT NULL
column base_models.weights_sha256 character varying(64) NOT NULL
column base_models.module_shapes jsonb NOT NULL
column base_models.num_layers integer NOT NULL
column base_models.created_at timestamp with time zone NOT NULL
column blobs.sha256 character varying(64) NOT NULL
column blobs.size_bytes bigint NOT NULL
column blobs.created_at timestamp with time zone NOT NULL
column blobs.rank integer
column blobs.alpha double precision
column blobs.use_rslora boolean
column blobs.target_modules character varying(128)
column catalog_secrets.name character varying(64) NOT NULL
column catalog_secrets.value character varying(256) NOT NULL
column policies.id bigint NOT NULL DEFAULT nextval('policies_id_seq'::regclass)
column policies.tenant_id bigint NOT NULL
column policies.name character varying(64) NOT NULL
column policies.base_model_id bigint NOT NULL
column policies.description text NOT NULL
column policies.head_number integer NOT NULL
column policies.created_at timestamp with time zone NOT NULL
column policies.created_by character varying(64) NOT NULL
column policy_heads.policy_id bigint
column policy_heads.tenant character varying(64)
column policy_heads.policy text
column policy_heads.base_model character varying(128)
column policy_heads.head_number integer
column policy_heads.latest_number integer
column policy_heads.latest_sha256 character varying(64)
column policy_heads.latest_created_at timestamp with time zone
column policy_heads.created_at timestamp with time zone
column revision_lineage.policy_id bigint
column revision_lineage.tenant character varying(64)
column revision_lineage.policy text
column revision_lineage.number integer
column revision_lineage.parent_number integer
column revision_lineage.sha256 character varying(64)
column revision_lineage.status character varying(16)
column revision_lineage.source character varying(256)
column revision_lineage.created_by character varying(64)
column revision_lineage.created_at timestamp with time zone
column revisions.id bigint NOT NULL DEFAULT nextval('revisions_id_seq'::regclass)
column revisions.tenant_id bigint NOT NULL
column revisions.policy_id bigint NOT NULL
column revisions.number integer NOT NULL
column revisions.parent_number integer
column revisions.sha256 character varying(64) NOT NULL
column revisions.size_bytes bigint NOT NULL
column revisions.rank integer NOT NULL
column revisions.alpha double precision NOT NULL
column revisions.use_rslora boolean NOT NULL
column revisions.target_modules character varying(128) NOT NULL
column revisions.format character varying(32) NOT NULL
column revisions.status character varying(16) NOT NULL
column revisions.source character varying(256) NOT NULL
column revisions.metrics jsonb NOT NULL
column revisions.created_by character varying(64) NOT NULL
column revisions.created_at timestamp with time zone NOT NULL
column revisions.retracted_at timestamp with time zone
column revisions.retracted_reason text
column revisions.idempotency_key character varying(128)
column tenant_limits.tenant_id bigint NOT NULL
column tenant_limits.max_stored_bytes bigint
column tenant_limits.max_revisions bigint
column tenant_limits.max_policies bigint
column tenant_limits.requests_per_second double precision
column tenant_limits.burst integer
column tenant_limits.max_concurrent_sequences integer
column tenant_limits.max_concurrent_sessions integer
column tenant_limits.updated_at timestamp with time zone NOT NULL
column tenant_limits.updated_by character varying(64) NOT NULL
column tenant_quotas.tenant character varying(64)
column tenant_quotas.max_stored_bytes bigint
column tenant_quotas.stored_bytes numeric
column tenant_quotas.max_revisions bigint
column tenant_quotas.revisions bigint
column tenant_quotas.max_policies bigint
column tenant_quotas.policies bigint
column tenant_quotas.requests_per_second double precision
column tenant_quotas.burst integer
column tenant_quotas.max_concurrent_sequences integer
column tenant_quotas.max_concurrent_sessions integer
column tenant_quotas.updated_at timestamp with time zone
column tenant_quotas.updated_by character varying(64)
column tenants.id bigint NOT NULL DEFAULT nextval('tenants_id_seq'::regclass)
column tenants.name character varying(64) NOT NULL
column tenants.created_at timestamp with time zone NOT NULL
constraint alias_moves alias_moves_pkey PRIMARY KEY (id)
constraint alias_moves alias_moves_policy_id_fkey FOREIGN KEY (policy_id) REFERENCES policies(id)
constraint aliases aliases_pkey PRIMARY KEY (policy_id, name)
constraint aliases aliases_policy_id_fkey FOREIGN KEY (policy_id) REFERENCES policies(id)
constraint aliases fk_aliases_revision FOREIGN KEY (policy_id, revision_number) REFERENCES revisions(policy_id, number)
constraint api_keys api_keys_key_id_key UNIQUE (key_id)
constraint api_keys api_keys_pkey PRIMARY KEY (id)
constraint api_keys api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants(id)
constraint api_keys ck_api_keys_role CHECK (((role)::text = ANY ((ARRAY['member'::character varying, 'service'::character varying, 'admin'::character varying])::text[])))
constraint audit_events audit_events_pkey PRIMARY KEY (id)
constraint audit_events audit_events_policy_id_fkey FOREIGN KEY (policy_id) REFERENCES policies(id)
constraint audit_events audit_events_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants(id)
constraint base_models base_models_name_key UNIQUE (name)
constraint base_models base_models_pkey PRIMARY KEY (id)
constraint blobs blobs_pkey PRIMARY KEY (sha256)
constraint catalog_secrets catalog_secrets_pkey PRIMARY KEY (name)
constraint policies policies_base_model_id_fkey FOREIGN KEY (base_model_id) REFERENCES base_models(id)
constraint policies policies_pkey PRIMARY KEY (id)
constraint policies policies_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants(id)
constraint policies uq_policies_tenant_name UNIQUE (tenant_id, name)
constraint revisions ck_revisions_number CHECK ((number >= 1))
constraint revisions ck_revisions_status CHECK (((status)::text = ANY ((ARRAY['active'::character varying, 'retracted'::character varying])::text[])))
constraint revisions revisions_pkey PRIMARY KEY (id)
constraint revisions uq_revisions_policy_number UNIQUE (policy_id, number)
constraint tenant_limits ck_tenant_limits_ranges CHECK (((max_stored_bytes >= 0) AND (max_revisions >= 0) AND (max_policies >= 0) AND (requests_per_second > (0)::double precision) AND (burst >= 1) AND (max_concurrent_sequences >= 0) AND (max_concurrent_sessions >= 0)))
constraint tenant_limits tenant_limits_pkey PRIMARY KEY (tenant_id)
constraint tenant_limits tenant_limits_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants(id)
constraint tenants tenants_name_key UNIQUE (name)
constraint tenants tenants_pkey PRIMARY KEY (id)
index CREATE UNIQUE INDEX alias_moves_pkey ON public.alias_moves USING btree (id)
index CREATE UNIQUE INDEX aliases_pkey ON public.aliases USING btree (policy_id, name)
index CREATE UNIQUE INDEX api_keys_key_id_key ON public.api_keys USING btree (key_id)
index CREATE UNIQUE INDEX api_keys_pkey ON public.api_keys USING btree (id)
index CREATE UNIQUE INDEX audit_events_pkey ON public.audit_events USING btree (id)
index CREATE UNIQUE INDEX base_models_name_key ON public.base_models USING btree (name)
index CREATE UNIQUE INDEX base_models_pkey ON public.base_models USING btree (id)
index CREATE UNIQUE INDEX blobs_pkey ON public.blobs USING btree (sha256)
index CREATE UNIQUE INDEX catalog_secrets_pkey ON public.catalog_secrets USING btree (name)
index CREATE INDEX ix_alias_moves_policy_alias ON public.alias_moves USING btree (policy_id, alias, id)
index CREATE INDEX ix_audit_events_policy ON public.audit_events USING btree (policy_id, id)
index CREATE INDEX ix_audit_events_tenant ON public.audit_events USING btree (tenant_id, id)
index CREATE UNIQUE INDEX ix_revisions_idempotency ON public.revisions USING btree (policy_id, idempotency_key)
index CREATE INDEX ix_revisions_tenant_id ON public.revisions USING btree (tenant_id, id)
index CREATE UNIQUE INDEX policies_pkey ON public.policies USING btree (id)
index CREATE UNIQUE INDEX revisions_pkey ON public.revisions USING btree (id)
index CREATE UNIQUE INDEX tenant_limits_pkey ON public.tenant_limits USING btree (tenant_id)
index CREATE UNIQUE INDEX tenants_name_key ON public.tenants USING btree (name)
index CREATE UNIQUE INDEX tenants_pkey ON public.tenants USING btree (id)
index CREATE UNIQUE INDEX uq_api_keys_tenant_name ON public.api_keys USING btree (tenant_id, name)
index CREATE UNIQUE INDEX uq_policies_tenant_name ON public.policies USING btree (tenant_id, name)
index CREATE UNIQUE INDEX uq_revisions_policy_number ON public.revisions USING btree (policy_id, number)
view alias_history AS  SELECT m.id, m.policy_id, t.name AS tenant, (t.name::text || '/'::text) || p.name::text AS policy, m.alias, m.from_number, m.to_number, m.action, m.actor, m.reason, m.at AS since, lead(m.at) OVER (PARTITION BY m.policy_id, m.alias ORDER BY m.id) AS until FROM alias_moves m JOIN policies p ON p.id = m.policy_id JOIN tenants t ON t.id = p.tenant_id;
view audit_log AS  SELECT e.id, e.at, t.name AS tenant, e.actor, k.name AS key_name, e.action, (pt.name::text || '/'::text) || p.name::text AS policy, e.revision_number, e.details FROM audit_events e LEFT JOIN tenants t ON t.id = e.tenant_id LEFT JOIN policies p ON p.id = e.policy_id LEFT JOIN tenants pt ON pt.id = p.tenant_id LEFT JOIN api_keys k ON e.actor::text = ('key:'::text || k.key_id::text);
view policy_heads AS  SELECT p.id AS policy_id, t.name AS tenant, (t.name::text || '/'::text) || p.name::text AS policy, b.name AS base_model, p.head_number, l.revision_number AS latest_number, r.sha256 AS latest_sha256, r.created_at AS latest_created_at, p.created_at FROM policies p JOIN tenants t ON t.id = p.tenant_id JOIN base_models b ON b.id = p.base_model_id LEFT JOIN aliases l ON l.policy_id = p.id AND l.name::text = 'latest'::text LEFT JOIN revisions r ON r.policy_id = p.id AND r.number = l.revision_number;
view revision_lineage AS  SELECT r.policy_id, t.name AS tenant, (t.name::text || '/'::text) || p.name::text AS policy, r.number, r.parent_number, r.sha256, r.status, r.source, r.created_by, r.created_at FROM revisions r JOIN policies p ON p.id = r.policy_id JOIN tenants t ON t.id = p.tenant_id;
view tenant_quotas AS  SELECT t.name AS tenant, l.max_stored_bytes, ( SELECT COALESCE(sum(r.size_bytes), 0::numeric) AS "coalesce" FROM revisions r WHERE r.tenant_id = t.id) AS stored_bytes, l.max_revisions, ( SELECT count(*) AS count FROM revisions r WHERE r.tenant_id = t.id) AS revisions, l.max_policies, ( SELECT count(*) AS count FROM policies p WHERE p.tenant_id = t.id) AS policies, l.requests_per_second, l.burst, l.max_concurrent_sequences, l.max_concurrent_sessions, l.updated_at, l.updated_by FROM tenants t LEFT JOIN tenant_limits l ON l.tenant_id = t.id;
trigger CREATE TRIGGER alias_moves_append_only BEFORE DELETE OR UPDATE ON public.alias_moves FOR EACH ROW EXECUTE FUNCTION mint_append_only()
trigger CREATE TRIGGER alias_moves_no_truncate BEFORE TRUNCATE ON public.alias_moves FOR EACH STATEMENT EXECUTE FUNCTION mint_append_only()
trigger CREATE TRIGGER audit_events_append_only BEFORE DELETE OR UPDATE ON public.audit_events FOR EACH ROW EXECUTE FUNCTION mint_append_only()
trigger CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events FOR EACH STATEMENT EXECUTE FUNCTION mint_append_only()
